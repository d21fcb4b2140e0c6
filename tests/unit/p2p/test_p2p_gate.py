"""The gate admits signed announcements from the right roles and rejects everything else."""

from __future__ import annotations

import pytest

from protocol.canonical import canonical_bytes
from protocol.envelope import AUDIENCE_SWARM, seal
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from shardcast.p2p.announcements import (
    KIND_HAVE, KIND_NOTICE, KIND_RELAY, KIND_VERSION, MAX_ANNOUNCEMENT_BYTES, Gate, HaveAdvert,
    Notice, RelayAdvert, VersionAnnouncement, encode, manifest_digest, version_announcement,
)
from shardcast.p2p.errors import Rejected

RUN = "run-1"
NOW = 1_800_000_000.0
OP = KeyPair.from_seed(b"o" * 32)
COORD = KeyPair.from_seed(b"c" * 32)
ANYONE = KeyPair.from_seed(b"a" * 32)


@pytest.fixture(scope="module")
def manifest_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    (d / "config.json").write_text("{}")
    (d / "w.bin").write_bytes(b"x" * 5000)
    return sign_manifest(build_manifest(d, run_id=RUN, version=4, step=40, shard_size=2048), OP)


def sealed(kind, body, key, now=NOW):
    """Signed for this run's swarm topic."""
    return seal(kind, body, key, now=now, run_id=RUN, audience=AUDIENCE_SWARM)


def gate(**kw) -> Gate:
    return Gate(RUN, OP.public, COORD.public, **kw)


def relay(key=ANYONE, **kw):
    body = RelayAdvert(run_id=kw.pop("run_id", RUN), url=kw.pop("url", "http://1.2.3.4:8800"), **kw)
    return seal(KIND_RELAY, body, key, now=NOW, run_id=body.run_id, audience=AUDIENCE_SWARM)


def rejected(g: Gate, data: bytes, now: float = NOW) -> str:
    with pytest.raises(Rejected) as info:
        g.admit(data, now)
    return info.value.reason


def test_version_announcement_from_operator_and_coordinator_is_admitted(manifest_env):
    g = gate()
    for key in (OP, COORD):
        ann = g.admit(encode(version_announcement(manifest_env, RUN, 4, 40, key, now=NOW)), NOW)
        assert ann.kind == KIND_VERSION and ann.body.version == 4 and ann.body.manifest == manifest_env
        assert ann.signer_id == key.peer_id


def test_version_announcement_from_any_other_key_is_rejected(manifest_env):
    assert rejected(gate(), encode(version_announcement(manifest_env, RUN, 4, 40, ANYONE, now=NOW))) == "bad-signer"


def test_claiming_the_coordinators_key_without_its_signature_is_rejected(manifest_env):
    forged = version_announcement(manifest_env, RUN, 4, 40, ANYONE, now=NOW)
    forged = forged.model_copy(update={"signer": COORD.public.hex})
    assert rejected(gate(), encode(forged)) == "bad-signer"


def test_tampered_body_is_rejected():
    env = relay()
    tampered = env.model_copy(update={"body": {**env.body, "url": "http://evil:1"}})
    assert rejected(gate(), encode(tampered)) == "bad-signer"


def test_embedded_manifest_must_be_the_operators(tmp_path, manifest_env):
    (tmp_path / "a").write_text("a")
    fake = sign_manifest(build_manifest(tmp_path, run_id=RUN, version=4, step=40), COORD)
    env = version_announcement(fake, RUN, 4, 40, COORD, now=NOW)
    assert rejected(gate(), encode(env)) == "bad-manifest"


def test_embedded_manifest_must_match_the_announced_version_and_hash(manifest_env):
    other_version = version_announcement(manifest_env, RUN, 5, 40, OP, now=NOW)
    assert rejected(gate(), encode(other_version)) == "bad-manifest"
    body = VersionAnnouncement(run_id=RUN, version=4, step=40, manifest_sha256="0" * 64, manifest=manifest_env)
    assert rejected(gate(), encode(sealed(KIND_VERSION, body, OP, now=NOW))) == "bad-manifest"


def test_hash_only_version_announcement_is_admitted(manifest_env):
    body = VersionAnnouncement(run_id=RUN, version=4, step=40, manifest_sha256=manifest_digest(manifest_env))
    ann = gate().admit(encode(sealed(KIND_VERSION, body, OP, now=NOW)), NOW)
    assert ann.body.manifest is None


def test_notices_only_from_the_coordinator():
    notice = Notice(run_id=RUN, text="maintenance at noon")
    assert gate().admit(encode(sealed(KIND_NOTICE, notice, COORD, now=NOW)), NOW).body.text == "maintenance at noon"
    assert rejected(gate(), encode(sealed(KIND_NOTICE, notice, OP, now=NOW))) == "bad-signer"
    no_coordinator_known = Gate(RUN, OP.public, None)
    assert rejected(no_coordinator_known, encode(sealed(KIND_NOTICE, notice, COORD, now=NOW))) == "bad-signer"


def test_relay_and_have_adverts_from_any_key_are_admitted():
    g = gate()
    assert g.admit(encode(relay()), NOW).body.url == "http://1.2.3.4:8800"
    have = HaveAdvert(run_id=RUN, versions=[1, 2], addrs=["/ip4/1.2.3.5/tcp/4001/p2p/12D3KooWx"])
    assert g.admit(encode(sealed(KIND_HAVE, have, KeyPair.generate(), now=NOW)), NOW).body.versions == [1, 2]


def test_stale_and_future_announcements_are_rejected():
    g = gate(max_skew_s=60)
    assert rejected(g, encode(relay()), now=NOW + 61) == "stale"
    assert rejected(g, encode(relay()), now=NOW - 61) == "stale"


def test_a_replayed_envelope_is_rejected():
    g = gate()
    data = encode(relay())
    g.admit(data, NOW)
    assert rejected(g, data, now=NOW + 1) == "replayed"


def test_untrusted_adverts_are_rate_limited_per_signer_and_refill():
    g = gate(rate_burst=3, rate_per_s=0.5)
    for _ in range(3):
        g.admit(encode(relay()), NOW)
    assert rejected(g, encode(relay())) == "rate-limited"
    # another signer has its own budget
    g.admit(encode(relay(key=KeyPair.generate())), NOW)
    # two seconds later one token is back
    later = sealed(KIND_RELAY, RelayAdvert(run_id=RUN, url="http://1.2.3.4:8800"), ANYONE, now=NOW + 2)
    g.admit(encode(later), NOW + 2)


def test_version_announcements_are_not_rate_limited(manifest_env):
    g = gate(rate_burst=1, rate_per_s=0.01)
    for _ in range(5):
        g.admit(encode(version_announcement(manifest_env, RUN, 4, 40, COORD, now=NOW)), NOW)


@pytest.mark.parametrize("data,reason", [
    (b"not json", "malformed"),
    (b"{}", "malformed"),
    (canonical_bytes({"kind": "swarm_relay", "body": {}}), "malformed"),
    (b"x" * (MAX_ANNOUNCEMENT_BYTES + 1), "oversized"),
])
def test_malformed_messages_are_rejected(data, reason):
    assert rejected(gate(), data) == reason


def test_unknown_kind_and_invalid_body_are_rejected():
    from protocol.messages import KIND_HEARTBEAT, Heartbeat

    assert rejected(gate(), encode(sealed(KIND_HEARTBEAT, Heartbeat(), ANYONE, now=NOW))) == "unknown-kind"
    bad_url = sealed(KIND_RELAY, RelayAdvert(run_id=RUN, url="http://ok"), ANYONE, now=NOW)
    bad_url = bad_url.model_copy(update={"body": {**bad_url.body, "url": "file:///etc/passwd"}})
    # re-sign so only the schema can object
    from protocol.envelope import envelope_signing_bytes
    sig = ANYONE.sign(envelope_signing_bytes(bad_url.kind, bad_url.body, bad_url.signer, bad_url.timestamp, bad_url.nonce,
                                            run_id=bad_url.run_id, audience=bad_url.audience))
    assert rejected(gate(), encode(bad_url.model_copy(update={"signature": sig}))) == "malformed"


def test_announcements_for_another_run_are_rejected():
    assert rejected(gate(), encode(relay(run_id="run-2"))) == "other-run"


def test_an_announcement_signed_for_another_run_or_role_is_rejected_even_if_its_body_names_this_run():
    body = RelayAdvert(run_id=RUN, url="http://r1:8800")
    other_run = seal(KIND_RELAY, body, ANYONE, now=NOW, run_id="run-2", audience=AUDIENCE_SWARM)
    assert rejected(gate(), encode(other_run)) == "other-run"
    to_coordinator = seal(KIND_RELAY, body, ANYONE, now=NOW, run_id=RUN, audience="coordinator")
    assert rejected(gate(), encode(to_coordinator)) == "other-run"
