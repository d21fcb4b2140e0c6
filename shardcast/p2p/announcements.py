"""Signed announcements carried on a run's gossipsub topic, and the gate that admits them.

Four kinds travel, each inside a protocol `Envelope` (seal/open_envelope) whose signer is
checked against the role allowed to say it:

    swarm_version  a new policy version: the operator-signed manifest (embedded when small) or
                   its hash. Outer envelope: operator or coordinator key (the trainer announces
                   after publishing; the coordinator after accepting POST /v1/policy). An
                   embedded manifest must also open against the operator key.
    swarm_relay    a relay joining ("up", repeated while alive) or leaving ("down"): URL, region,
                   capacity. Any key (relays are untrusted: manifests are signed, shards hashed),
                   so these are rate-limited per signer and expire after `ttl_s`. It may carry
                   an `endorsement`: a `swarm_relay_endorsement` envelope in which the operator
                   (or coordinator) key names this relay's key and URL until a time; endorsed
                   relays have a table of their own that unendorsed ones cannot fill
                   (shardcast.p2p.view), and may use any address.
    swarm_have     "the peer with my key holds these versions; dial me at these addrs":
                   any key, rate-limited and expiring like relay adverts. The dialled peer id is
                   the signer's, which the libp2p secure channel authenticates.
    swarm_notice   a coordinator notice (free text plus a small dict): coordinator key only.

`Gate.admit(data, now)` is the one place that decides; it is pure apart from its own memory
(nonces seen, per-signer token buckets) and takes the clock as an argument. It raises
`Rejected(reason)` for anything unsigned, malformed, oversized, for another run, stale,
replayed, signed by a key without the right role, over its signer's rate, pointing at an
address it may not (shardcast.p2p.addresses: "address"), or carrying an endorsement that
does not hold ("bad-endorsement"). A signature that does not verify for the key it names is
`forged` besides: no honest peer forwards it, and the host cuts off peers that do. The node runs it as the gossipsub topic validator, so a
rejected message is neither delivered nor forwarded (and counted as rejected_<reason>).

`endorse_relay` makes an endorsement (`python -m shardcast.p2p.endorse` from a shell).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from protocol.canonical import canonical_bytes
from protocol.envelope import AUDIENCE_SWARM, Envelope, ReplayGuard, open_envelope, seal
from protocol.errors import MessageError, ProtocolError, ScopeError, SignatureError, StaleMessageError
from protocol.identity import KeyPair, PublicKey
from protocol.manifest import open_manifest
from protocol.messages import Hex64, Ident, Strict
from shardcast.p2p.addresses import AddressRefused, check_multiaddr, check_relay_url, relay_url_shape
from shardcast.p2p.errors import Rejected

KIND_VERSION = "swarm_version"
KIND_RELAY = "swarm_relay"
KIND_HAVE = "swarm_have"
KIND_NOTICE = "swarm_notice"
KIND_RELAY_ENDORSEMENT = "swarm_relay_endorsement"  # travels inside relay adverts only
KINDS = (KIND_VERSION, KIND_RELAY, KIND_HAVE, KIND_NOTICE)

MAX_ANNOUNCEMENT_BYTES = 1024 * 1024  # gossipsub's default frame limit in py-libp2p
MAX_EMBEDDED_MANIFEST_BYTES = 256 * 1024
# Relay and have adverts (any key may sign them) are a few KiB at most (URL, endorsement, 64
# versions, 8 addresses); a larger one is refused before its body is encoded and its signature
# checked, which for a 1 MiB message costs the receiver ~10 ms of CPU (its signer need not even
# sign: the encoding is paid before the signature fails).
MAX_UNTRUSTED_BYTES = 16 * 1024
# Trusted kinds are as large as honest ones get: a version announcement embeds a manifest of
# at most MAX_EMBEDDED_MANIFEST_BYTES, a notice is 2000 characters and 32 small values. A
# forgery naming the coordinator's key cost ~7 ms of CPU a MiB to refuse.
MAX_KIND_BYTES = {KIND_VERSION: MAX_EMBEDDED_MANIFEST_BYTES + 16 * 1024, KIND_NOTICE: 64 * 1024}
MAX_VERSION = 2**63 - 1  # what a version number may be in an advert anyone may sign
MAX_ADVERT_TTL_S = 600.0
MAX_TRACKED_SIGNERS = 10_000

AdvertVersion = Annotated[int, Field(ge=0, le=MAX_VERSION)]
MultiaddrStr = Annotated[str, Field(max_length=256, pattern=r"^/(ip4|ip6|dns|dns4|dns6)/[^\s]+$")]


class VersionAnnouncement(Strict):
    """A new policy version. `manifest_sha256` names the signed manifest envelope (sha256 of
    its canonical JSON); `manifest` carries it whole when it is small enough."""

    run_id: Ident
    version: int = Field(ge=0)
    step: int = Field(ge=0)
    manifest_sha256: Hex64
    manifest: Envelope | None = None


RelayUrl = Annotated[str, Field(max_length=512, pattern=r"^https?://[^\s]+$")]


class RelayEndorsement(Strict):
    """The operator's word (signed by its key, or the coordinator's) that the relay whose key
    is `relay_key` serves run `run_id` at `url` until `expires_at` (unix seconds). Carried
    inside that relay's adverts; made by `endorse_relay`."""

    run_id: Ident
    relay_key: Hex64
    url: RelayUrl
    expires_at: float = Field(gt=0)


class RelayAdvert(Strict):
    """A shardcast relay, announced by the relay's own key (and endorsed or not)."""

    run_id: Ident
    url: RelayUrl
    region: str = Field(default="", max_length=64)
    capacity_mbps: float = Field(default=0.0, ge=0.0, le=1e7)
    state: Literal["up", "down"] = "up"
    ttl_s: float = Field(default=30.0, gt=0.0, le=MAX_ADVERT_TTL_S)
    versions: list[AdvertVersion] = Field(default_factory=list, max_length=64)
    endorsement: Envelope | None = None


class HaveAdvert(Strict):
    """Versions whose verified shards the signer's libp2p peer serves, and where to dial it."""

    run_id: Ident
    versions: list[AdvertVersion] = Field(max_length=64)
    addrs: list[MultiaddrStr] = Field(min_length=1, max_length=8)
    ttl_s: float = Field(default=30.0, gt=0.0, le=MAX_ADVERT_TTL_S)


class Notice(Strict):
    """A coordinator notice to every peer of the run."""

    run_id: Ident
    level: Literal["info", "warning", "critical"] = "info"
    text: str = Field(max_length=2000)
    data: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32)


BODY_TYPES: dict[str, type[BaseModel]] = {
    KIND_VERSION: VersionAnnouncement, KIND_RELAY: RelayAdvert,
    KIND_HAVE: HaveAdvert, KIND_NOTICE: Notice,
}
UNTRUSTED_KINDS = (KIND_RELAY, KIND_HAVE)


@dataclass(frozen=True)
class Announcement:
    """An admitted announcement: its kind, typed body and who signed it when; `endorsed`: a
    relay advert whose endorsement the gate checked."""

    kind: str
    body: Any
    signer: PublicKey
    timestamp: float
    envelope: Envelope
    endorsed: bool = False

    @property
    def signer_id(self) -> str:
        return self.signer.peer_id


def manifest_digest(manifest_env: Envelope) -> str:
    """The hex sha256 that names a signed manifest envelope in version announcements."""
    return hashlib.sha256(canonical_bytes(manifest_env.model_dump(mode="json"))).hexdigest()


def encode(env: Envelope) -> bytes:
    """The bytes published on the topic."""
    return canonical_bytes(env.model_dump(mode="json"))


def version_announcement(manifest_env: Envelope, run_id: str, version: int, step: int,
                         key: KeyPair, *, now: float | None = None) -> Envelope:
    """Seal the announcement of a policy version (embedding the manifest when small)."""
    embed = len(encode(manifest_env)) <= MAX_EMBEDDED_MANIFEST_BYTES
    body = VersionAnnouncement(run_id=run_id, version=version, step=step,
                               manifest_sha256=manifest_digest(manifest_env),
                               manifest=manifest_env if embed else None)
    return seal(KIND_VERSION, body, key, now=now, run_id=run_id, audience=AUDIENCE_SWARM)


def endorse_relay(key: KeyPair, *, run_id: str, relay_key: PublicKey, url: str, valid_for_s: float,
                  now: float | None = None) -> Envelope:
    """The operator's (or coordinator's) endorsement of the relay with `relay_key` at `url`
    for run `run_id`, valid `valid_for_s` from `now`. The relay carries it in its adverts
    (RelayConfig.endorsement)."""
    issued = time.time() if now is None else now
    body = RelayEndorsement(run_id=run_id, relay_key=relay_key.hex, url=relay_url_shape(url),
                            expires_at=issued + valid_for_s)
    return seal(KIND_RELAY_ENDORSEMENT, body, key, now=issued, run_id=run_id, audience=AUDIENCE_SWARM)


def check_endorsement(env: Envelope, *, run_id: str, relay_key: str, url: str, now: float,
                      endorsers: set[str]) -> RelayEndorsement:
    """The endorsement `env` if it holds for this relay key, URL and run at `now`, signed by
    one of `endorsers` (hex keys); Rejected("bad-endorsement") otherwise."""
    try:
        body = open_envelope(env, KIND_RELAY_ENDORSEMENT, RelayEndorsement, max_skew_s=None,
                             allowed_signers=endorsers, run_id=run_id, audience=AUDIENCE_SWARM).body
    except ProtocolError as exc:
        raise Rejected("bad-endorsement", str(exc)[:200]) from exc
    if body.run_id != run_id:
        raise Rejected("bad-endorsement", f"it endorses a relay of run {body.run_id}")
    if body.relay_key != relay_key or body.url.rstrip("/") != url.rstrip("/"):
        raise Rejected("bad-endorsement", "it endorses another relay key or URL")
    if body.expires_at <= now:
        raise Rejected("bad-endorsement", "it has expired")
    return body


class TokenBuckets:
    """Per-signer token buckets (burst, rate per second), bounded in the signers tracked."""

    def __init__(self, burst: int, per_s: float, max_signers: int = MAX_TRACKED_SIGNERS):
        self.burst, self.per_s, self.max_signers = float(burst), per_s, max_signers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, signer: str, now: float) -> bool:
        tokens, last = self._buckets.pop(signer, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.per_s)
        ok = tokens >= 1.0
        self._buckets[signer] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_signers:
            self._buckets.popitem(last=False)
        return ok


class Gate:
    """Admits or rejects raw topic messages for one run (see the module docstring)."""

    def __init__(self, run_id: str, operator_key: PublicKey, coordinator_key: PublicKey | None = None,
                 *, max_skew_s: float = 60.0, rate_burst: int = 6, rate_per_s: float = 0.5,
                 allow_private: bool = False):
        self.run_id = run_id
        self.operator_key = operator_key
        self.coordinator_key = coordinator_key
        self.max_skew_s = max_skew_s
        self.allow_private = allow_private
        self._replay = ReplayGuard(window_s=2 * max_skew_s + 1.0, max_entries=100_000)
        self._rate = TokenBuckets(rate_burst, rate_per_s)

    def _allowed(self, kind: str) -> set[str] | None:
        """Hex keys allowed to sign `kind` (None: any key)."""
        coord = {self.coordinator_key.hex} if self.coordinator_key is not None else set()
        if kind == KIND_VERSION:
            return {self.operator_key.hex} | coord
        if kind == KIND_NOTICE:
            return coord
        return None

    def admit(self, data: bytes, now: float) -> Announcement:
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise Rejected("oversized", f"{len(data)} bytes")
        try:
            env = Envelope.model_validate_json(data)
        except ValidationError as exc:
            raise Rejected("malformed", "not a signed envelope") from exc
        body_type = BODY_TYPES.get(env.kind)
        if body_type is None:
            raise Rejected("unknown-kind", env.kind)
        if len(data) > (MAX_UNTRUSTED_BYTES if env.kind in UNTRUSTED_KINDS else MAX_KIND_BYTES[env.kind]):
            raise Rejected("oversized", f"{len(data)} bytes of {env.kind}")
        # Before the body is encoded and the signature checked (~2 ms for an announcement
        # with a 256 KiB manifest): old announcements replayed are each a new message to
        # gossipsub, and a stale one is refused whoever signed it. (NaN fails too.)
        if not abs(now - env.timestamp) <= self.max_skew_s:
            raise Rejected("stale", f"timestamp {now - env.timestamp:+.0f} s off this node's clock")
        try:
            opened = open_envelope(env, env.kind, body_type, now=now, max_skew_s=self.max_skew_s,
                                   allowed_signers=self._allowed(env.kind), run_id=self.run_id, audience=AUDIENCE_SWARM)
        except ScopeError as exc:
            raise Rejected("other-run", str(exc)) from exc
        except StaleMessageError as exc:
            raise Rejected("stale", str(exc)) from exc
        except SignatureError as exc:
            # A key that may not sign this kind depends on this node's configuration; a
            # signature that does not verify fails at every peer (forged: see Rejected).
            allowed = self._allowed(env.kind)
            raise Rejected("bad-signer", str(exc), forged=allowed is None or env.signer in allowed) from exc
        except ProtocolError as exc:
            raise Rejected("malformed", str(exc)) from exc
        body = opened.body
        if body.run_id != self.run_id:
            raise Rejected("other-run", body.run_id)
        endorsed = False
        if env.kind == KIND_VERSION:
            self._check_version(body)
        elif env.kind == KIND_RELAY:
            endorsed = self._check_relay(body, env.signer, now)
        elif env.kind == KIND_HAVE:
            self._check_addrs(body.addrs)
        try:
            self._replay.check_and_remember(env.signer, env.nonce, env.timestamp, now=now)
        except MessageError as exc:
            raise Rejected("replayed", str(exc)) from exc
        if env.kind in UNTRUSTED_KINDS and not self._rate.take(env.signer, now):
            raise Rejected("rate-limited", opened.signer_id)
        return Announcement(kind=env.kind, body=body, signer=opened.signer,
                            timestamp=env.timestamp, envelope=env, endorsed=endorsed)

    def _check_relay(self, body: RelayAdvert, signer: str, now: float) -> bool:
        """True when the advert is endorsed; Rejected when its URL or endorsement may not be used."""
        if body.endorsement is not None:
            # The keys that may announce versions may endorse relays.
            check_endorsement(body.endorsement, run_id=self.run_id, relay_key=signer, url=body.url,
                              now=now, endorsers=self._allowed(KIND_VERSION) or set())
            try:
                relay_url_shape(body.url)
            except AddressRefused as exc:
                raise Rejected("address", str(exc)) from exc
            return True
        if body.state == "down":
            return False  # withdraws only what this signer advertised: no address is used
        try:
            check_relay_url(body.url, allow_private=self.allow_private)
        except AddressRefused as exc:
            raise Rejected("address", str(exc)) from exc
        return False

    def _check_addrs(self, addrs: list[str]) -> None:
        for a in addrs:
            try:
                check_multiaddr(a, allow_private=self.allow_private)
            except AddressRefused as exc:
                raise Rejected("address", str(exc)) from exc

    def _check_version(self, body: VersionAnnouncement) -> None:
        if body.manifest is None:
            return
        if manifest_digest(body.manifest) != body.manifest_sha256:
            raise Rejected("bad-manifest", "embedded manifest does not match its hash")
        try:
            m = open_manifest(body.manifest, self.operator_key)
        except ProtocolError as exc:
            raise Rejected("bad-manifest", str(exc)) from exc
        if (m.run_id, m.version, m.step) != (body.run_id, body.version, body.step):
            raise Rejected("bad-manifest", "embedded manifest is for another run, version or step")
