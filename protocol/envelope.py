"""Signed envelopes: how every state-changing message travels.

An `Envelope` wraps a message body (a dict validated into a pydantic model by the receiver)
with its kind, the run it belongs to, the role it is addressed to (its audience), the
signer's public key, a timestamp and a random nonce, and an Ed25519 signature over the
canonical bytes of all of those (signing domain `swarmrl-envelope/2`). Kind, run and
audience are signed, so a body signed as one kind of message cannot be replayed as another,
a message of one run cannot be replayed against another run that reuses the keys, and a
message signed for one role (say a verifier) cannot be played to another (the coordinator).

Receivers call `open_envelope`, which checks in order: the kind, the run and the audience
(each refusal names the expected and the received value), the signer (when the receiver
requires a particular key or one of a set), the signature, the timestamp skew, and finally
the body against its schema. `run_id=None` / `audience=None` skip a scope check; only
callers that check the run against the body instead (signed manifests, whose body names
their run) or that re-verify archived records pass None. Replay protection (a nonce seen
twice) needs state and is the receiver's job: `ReplayGuard` is the in-memory version; the
coordinator keeps nonces in its database.

`envelope_digest` names one signed envelope by SHA-256: a verdict carries the digests of the
submission and lease it judged, and the coordinator compares them with what it stored.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.canonical import canonical_bytes
from protocol.errors import MessageError, ScopeError, SignatureError, StaleMessageError
from protocol.identity import KeyPair, PublicKey

ENVELOPE_DOMAIN = b"swarmrl-envelope/2\n"
DEFAULT_MAX_SKEW_S = 120.0

# The roles a message can be addressed to (the envelope's `audience`).
AUDIENCE_COORDINATOR = "coordinator"   # registration, heartbeat, leases asked/released, submission,
                                       # claim, verdict, batch request and ack, eval report
AUDIENCE_WORKER = "worker"             # lease (the verifier and auditors re-open it as such)
AUDIENCE_VERIFIER = "verifier"         # reserved: nothing is sent to a verifier yet
AUDIENCE_SWARM = "swarm"               # broadcast: policy manifests, gossip on the run's topic

# The characters of every identifier on the wire (run ids, submission and lease ids, verifier
# instances: `protocol.messages.Ident`), as a regex character class: one definition.
IDENT_CHARS = r"A-Za-z0-9_.:\-"
RUN_ID_PATTERN = rf"^[{IDENT_CHARS}]{{1,128}}$"

B = TypeVar("B", bound=BaseModel)


class Envelope(BaseModel):
    """A signed message. Produced by whoever sends a state-changing request; consumed by
    the service that acts on it (and archived, so auditors can re-check the signature)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN timestamp is within no window

    kind: str = Field(min_length=1, max_length=64, description="message type, e.g. 'submission'")
    run_id: str = Field(pattern=RUN_ID_PATTERN, description="the run this message belongs to (signed)")
    audience: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$",
                          description="the role it is addressed to: coordinator, worker, verifier or swarm (signed)")
    body: dict[str, Any] = Field(description="the message itself, as JSON")
    signer: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex Ed25519 public key of the signer")
    timestamp: float = Field(description="signer's clock, unix seconds")
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$", description="16 random bytes, hex; unique per message")
    signature: str = Field(max_length=100, description="base64 Ed25519 signature")

    def signing_bytes(self) -> bytes:
        return envelope_signing_bytes(self.kind, self.body, self.signer, self.timestamp, self.nonce,
                                      run_id=self.run_id, audience=self.audience)

    def signing_bytes_with(self, canonical_body: bytes) -> bytes:
        """The same bytes from the body's canonical JSON, already encoded: canonical JSON sorts
        keys, and "audience" < "body" < every other key, so the encoding splits exactly around
        the body (a test checks this against `signing_bytes`)."""
        head = canonical_bytes({"audience": self.audience})
        rest = canonical_bytes({"kind": self.kind, "nonce": self.nonce, "run_id": self.run_id,
                                "signer": self.signer, "timestamp": self.timestamp})
        return ENVELOPE_DOMAIN + head[:-1] + b',"body":' + canonical_body + b"," + rest[1:]

    @property
    def signer_key(self) -> PublicKey:
        return PublicKey.from_hex(self.signer)


def envelope_signing_bytes(kind: str, body: dict, signer: str, timestamp: float, nonce: str, *,
                           run_id: str, audience: str) -> bytes:
    return ENVELOPE_DOMAIN + canonical_bytes(
        {"kind": kind, "run_id": run_id, "audience": audience, "body": body, "signer": signer,
         "timestamp": timestamp, "nonce": nonce}
    )


def envelope_digest(env: Envelope, canonical_body: bytes | None = None) -> str:
    """Hex SHA-256 naming one signed envelope: of its signing bytes and its signature, so
    whitespace or key order of a JSON copy does not change it. `canonical_body`: the body's
    canonical bytes when the caller has them already (`Opened.canonical_body`)."""
    try:
        data = env.signing_bytes() if canonical_body is None else env.signing_bytes_with(canonical_body)
    except MessageError:  # no canonical form (a NaN in the body): nothing signed has this digest
        data = b"uncanonical\n" + env.model_dump_json().encode()
    return hashlib.sha256(data + b"\n" + env.signature.encode("utf-8")).hexdigest()


def seal(kind: str, body: BaseModel, key: KeyPair, *, run_id: str, audience: str,
         now: float | None = None) -> Envelope:
    """Sign `body` as a message of `kind` in run `run_id`, addressed to `audience`, with `key`."""
    body_json = body.model_dump(mode="json")
    timestamp = float(time.time() if now is None else now)
    nonce = os.urandom(16).hex()
    data = envelope_signing_bytes(kind, body_json, key.public.hex, timestamp, nonce, run_id=run_id,
                                  audience=audience)
    return Envelope(
        kind=kind, run_id=run_id, audience=audience, body=body_json, signer=key.public.hex, timestamp=timestamp,
        nonce=nonce, signature=key.sign(data),
    )


@dataclass(frozen=True)
class Opened(Generic[B]):
    """A verified envelope: the typed body and who signed it, when, with which nonce."""

    body: B
    signer: PublicKey
    timestamp: float
    nonce: str
    envelope: Envelope
    canonical_body: bytes = b""  # the body's canonical JSON, as signed (callers reuse it, e.g. intake)

    @property
    def signer_id(self) -> str:
        return self.signer.peer_id


def check_scope(env: Envelope, *, run_id: str | None, audience: str | None) -> None:
    """Raise ScopeError unless `env` was signed for run `run_id` and role `audience` (None: not checked)."""
    if run_id is not None and env.run_id != run_id:
        raise ScopeError(f"{env.kind} was signed for run {env.run_id!r}, but this {audience or 'receiver'} "
                         f"serves run {run_id!r}; sign it with the run id of GET /v1/run")
    if audience is not None and env.audience != audience:
        raise ScopeError(f"{env.kind} was signed for the {env.audience!r} role, but was sent to the {audience!r}; "
                         f"sign it with audience {audience!r}")


def open_envelope(
    env: Envelope,
    kind: str,
    body_type: type[B],
    *,
    run_id: str | None,
    audience: str | None,
    now: float | None = None,
    max_skew_s: float | None = DEFAULT_MAX_SKEW_S,
    signer: PublicKey | None = None,
    allowed_signers: set[str] | None = None,
) -> Opened[B]:
    """Verify `env` and return its typed body.

    `run_id`, `audience`: the run and role this receiver serves (see `check_scope`; both are
    required so that every call site decides). `signer`: the one key that must have signed;
    `allowed_signers`: a set of hex keys of which one must have signed. `max_skew_s=None`
    skips the clock check (for archived messages that are re-verified later). Raises
    MessageError (ScopeError for another run or role), SignatureError or StaleMessageError;
    never returns an unverified body.
    """
    if env.kind != kind:
        raise MessageError(f"expected a {kind!r} message, got {env.kind!r}")
    check_scope(env, run_id=run_id, audience=audience)
    key = env.signer_key
    if signer is not None and key.raw != signer.raw:
        raise SignatureError(f"{kind} must be signed by {signer.peer_id}, not {key.peer_id}")
    if allowed_signers is not None and env.signer not in allowed_signers:
        raise SignatureError(f"{kind} signed by {key.peer_id}, which is not an authorised key")
    body_bytes = canonical_bytes(env.body)
    key.verify(env.signature, env.signing_bytes_with(body_bytes))
    if max_skew_s is not None:
        clock = time.time() if now is None else now
        if not abs(clock - env.timestamp) <= max_skew_s:  # written so that NaN fails
            raise StaleMessageError(
                f"{kind} timestamp is {clock - env.timestamp:+.0f} s off this server's clock "
                f"(allowed: {max_skew_s:.0f} s); check the sender's clock"
            )
    try:
        body = body_type.model_validate(env.body)
    except ValidationError as exc:
        raise MessageError(f"invalid {kind}: {_first_error(exc)}") from exc
    parsed = body.model_dump(mode="json", exclude_unset=True)
    if canonical_bytes(parsed) != body_bytes:
        where = _coerced(env.body, parsed, "")
        if where is not None:
            raise MessageError(f"invalid {kind}: the signed body is not what it parses to at {where or 'its top'} "
                               "(a value pydantic would convert, such as \"1\" for 1): what is signed must be "
                               "exactly what is used")
    return Opened(body=body, signer=key, timestamp=env.timestamp, nonce=env.nonce, envelope=env,
                  canonical_body=body_bytes)


def _coerced(sent: Any, parsed: Any, path: str) -> str | None:
    """Where the body as signed (`sent`) differs from the JSON of what it parses to (`parsed`),
    or None. pydantic's lax mode reads "1", 1.0 and true as the integer 1, so a body could be
    used (judged, stored, trained on) as values its signer did not write byte for byte (found
    by the judge fuzz: a signed "policy_version": "1" was judged as version 1). One leniency:
    an integer where a float is expected (JSON writers put 1 for 1.0) is the same number.
    Depth is the schema's: `parsed` is a validated model's dump."""
    if isinstance(parsed, dict):
        if not isinstance(sent, dict) or set(sent) != set(parsed):
            return path
        for k in parsed:
            bad = _coerced(sent[k], parsed[k], f"{path}.{k}" if path else k)
            if bad is not None:
                return bad
        return None
    if isinstance(parsed, list):
        if not isinstance(sent, list) or len(sent) != len(parsed):
            return path
        for i, (a, b) in enumerate(zip(sent, parsed)):
            bad = _coerced(a, b, f"{path}[{i}]")
            if bad is not None:
                return bad
        return None
    if type(parsed) is float and type(sent) is int and float(sent) == parsed:
        return None
    return None if type(sent) is type(parsed) and sent == parsed else path


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return str(exc)
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {e.get('msg')}{more}"


class ReplayGuard:
    """Remembers (signer, nonce) pairs for `window_s` seconds and refuses repeats.

    In-memory, thread-safe and bounded (`max_entries`); fits services whose state may be
    lost on restart because the timestamp window bounds what could be replayed.
    """

    def __init__(self, window_s: float = 2 * DEFAULT_MAX_SKEW_S, max_entries: int = 1_000_000):
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_remember(self, signer: str, nonce: str, timestamp: float, now: float | None = None) -> None:
        clock = time.time() if now is None else now
        with self._lock:
            while self._seen:
                (k, t) = next(iter(self._seen.items()))
                if t >= clock - self.window_s and len(self._seen) < self.max_entries:
                    break
                self._seen.popitem(last=False)
            if (signer, nonce) in self._seen:
                raise MessageError("replayed message: this nonce was already used by this signer")
            self._seen[(signer, nonce)] = clock
