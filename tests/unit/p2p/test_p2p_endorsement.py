"""Relay adverts are bounded and endorsed: the gate's address rules and endorsement checks, the
view's budgets (128 throw-away keys cannot crowd out an endorsed relay), and the operator's
`python -m shardcast.p2p.endorse`. Pure: gate and view take the clock as an argument."""

from __future__ import annotations

import pytest

from protocol.envelope import AUDIENCE_SWARM, seal
from protocol.identity import KeyPair
from shardcast.p2p.announcements import (
    KIND_HAVE, KIND_RELAY, Gate, HaveAdvert, RelayAdvert, encode, endorse_relay,
)
from shardcast.p2p.endorse import load_endorsement, main
from shardcast.p2p.errors import P2PError, Rejected
from shardcast.p2p.view import SwarmView

RUN = "run-1"
NOW = 1_800_000_000.0
OP, COORD = KeyPair.from_seed(b"o" * 32), KeyPair.from_seed(b"c" * 32)
RELAY = KeyPair.from_seed(b"r" * 32)
URL = "https://relay.example.org:8800"


def gate(**kw) -> Gate:
    return Gate(RUN, OP.public, COORD.public, **kw)


def advert(key=RELAY, url=URL, endorsement=None, ts=NOW, **kw) -> bytes:
    return encode(seal(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, endorsement=endorsement, **kw), key, now=ts,
                       run_id=RUN, audience=AUDIENCE_SWARM))


def endorsement(signer=OP, relay=RELAY, url=URL, run_id=RUN, valid_for_s=3600.0, now=NOW):
    return endorse_relay(signer, run_id=run_id, relay_key=relay.public, url=url, valid_for_s=valid_for_s, now=now)


def reason(g: Gate, data: bytes, now: float = NOW) -> str:
    with pytest.raises(Rejected) as info:
        g.admit(data, now)
    return info.value.reason


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8800", "http://10.1.2.3:8800", "http://192.168.0.7", "http://169.254.169.254",
    "http://[::1]:8800", "http://[fe80::1]:8800", "http://100.64.0.1:8800", "http://0.0.0.0:8800",
    "http://localhost:8800", "http://relay.example.org:8800",        # names: resolution out of sight
])
def test_unendorsed_adverts_for_private_loopback_link_local_or_named_hosts_are_refused(url):
    assert reason(gate(), advert(url=url)) == "address"
    assert gate(allow_private=True).admit(advert(url=url), NOW).body.url == url


@pytest.mark.parametrize("url", ["http://1.2.3.4:8800/admin/delete", "http://1.2.3.4:8800?x=1",
                                 "http://user:pw@1.2.3.4:8800", "http://1.2.3.4:0"])
def test_a_relay_url_is_scheme_host_port_only_even_where_private_addresses_are_allowed(url):
    assert reason(gate(allow_private=True), advert(url=url)) == "address"


def test_public_addresses_are_admitted_and_have_adverts_follow_the_same_rule():
    assert gate().admit(advert(url="http://1.2.3.4:8800"), NOW).endorsed is False
    for addrs, ok in ((["/ip4/1.2.3.4/tcp/4001/p2p/x"], True), (["/ip4/127.0.0.1/tcp/4001/p2p/x"], False),
                      (["/ip4/1.2.3.4/tcp/1/p2p/x", "/ip4/10.0.0.2/tcp/1/p2p/x"], False),
                      (["/dns4/internal.corp/tcp/4001/p2p/x"], False)):
        data = encode(seal(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1], addrs=addrs), KeyPair.generate(), now=NOW,
                           run_id=RUN, audience=AUDIENCE_SWARM))
        if ok:
            assert gate().admit(data, NOW).kind == KIND_HAVE
        else:
            assert reason(gate(), data) == "address"


def test_an_endorsed_relay_is_admitted_whatever_its_address_by_the_operator_or_coordinator():
    for signer in (OP, COORD):
        ann = gate().admit(advert(endorsement=endorsement(signer)), NOW)
        assert ann.endorsed
    private = "http://10.0.0.5:8800"
    assert gate().admit(advert(url=private, endorsement=endorsement(url=private)), NOW).endorsed


@pytest.mark.parametrize("bad", [
    lambda: endorsement(signer=KeyPair.generate()),          # not the operator's side
    lambda: endorsement(relay=KeyPair.generate()),           # another relay's key
    lambda: endorsement(url="https://other.example.org"),    # another URL
    lambda: endorsement(run_id="run-2"),                     # another run
    lambda: endorsement(valid_for_s=10.0, now=NOW - 3600),   # expired
], ids=["signer", "key", "url", "run", "expired"])
def test_an_endorsement_that_does_not_hold_rejects_the_advert(bad):
    assert reason(gate(), advert(endorsement=bad())) == "bad-endorsement"


def test_a_forged_endorsement_body_is_rejected():
    env = endorsement()
    forged = env.model_copy(update={"body": {**env.body, "expires_at": NOW + 10 ** 9}})
    assert reason(gate(), advert(endorsement=forged)) == "bad-endorsement"


def test_128_throwaway_keys_fill_the_unendorsed_budget_and_cannot_crowd_out_an_endorsed_relay():
    g, view = gate(rate_burst=10), SwarmView(unendorsed_relays=8, unendorsed_per_signer=1)
    for k in range(128):
        key = KeyPair.generate()
        for u in range(4):
            view.apply(g.admit(advert(key=key, url=f"http://1.2.{k}.{u + 1}:8800"), NOW), NOW)
    assert len(view.relays(NOW)) == 8                             # the budget, one per key
    assert view.apply(g.admit(advert(endorsement=endorsement()), NOW), NOW)
    relays = view.relays(NOW)
    assert relays[0].url == URL and relays[0].endorsed and len(relays) == 9
    # a flood after it does not evict it either
    for k in range(128):
        view.apply(g.admit(advert(key=KeyPair.generate(), url=f"http://1.3.{k}.1:8800"), NOW), NOW)
    assert URL in [r.url for r in view.relays(NOW)]


def test_an_endorsed_relay_withdrawn_or_unendorsed_moves_tables():
    g, view = gate(rate_burst=10), SwarmView()
    view.apply(g.admit(advert(url="http://1.2.3.4:8800", endorsement=endorsement(url="http://1.2.3.4:8800")), NOW), NOW)
    assert [r.endorsed for r in view.relays(NOW)] == [True]
    view.apply(g.admit(advert(url="http://1.2.3.4:8800"), NOW), NOW)        # the same relay, no endorsement
    assert [r.endorsed for r in view.relays(NOW)] == [False]
    view.apply(g.admit(advert(url="http://1.2.3.4:8800", state="down"), NOW), NOW)
    assert view.relays(NOW) == []


def test_the_endorse_command_writes_what_the_relay_loads(tmp_path, capsys):
    key_file = tmp_path / "operator.key"
    OP.save(key_file)
    assert main(["--key", str(key_file), "--run-id", RUN, "--relay-key", RELAY.public.hex, "--url", URL,
                 "--days", "1"]) == 0
    out = tmp_path / "endorsement.json"
    out.write_text(capsys.readouterr().out)
    env = load_endorsement(out, run_id=RUN, relay_key=RELAY.public, url=URL, endorsers={OP.public.hex})
    assert gate().admit(advert(endorsement=env, ts=env.timestamp), env.timestamp).endorsed
    with pytest.raises(P2PError, match="does not hold"):
        load_endorsement(out, run_id=RUN, relay_key=KeyPair.generate().public, url=URL, endorsers={OP.public.hex})
