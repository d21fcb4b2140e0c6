"""The coordinator's cheap checks: what `protocol.guard` refuses once a request's headers are in,
before the app runs and before a byte of its body is read.

In order (the first that fails answers):

1. the request rate per client address (429 `rate_limited_address`): every request, refused or
   not, takes a token, so a flood of refusals pays like anything else;
2. the route's body cap (413 `too_large`): a body's declared Content-Length against the largest
   message that route can carry in this run (`route_caps`), so a 4 MB heartbeat is refused
   on its headers;
3. the byte budget per client address (429 `byte_budget`): the declared length (a chunked
   body is charged its route's cap) against a token bucket of bytes.

Addresses in `limits.exempt_addresses` skip 1 and 3 (never 2). The client address is the TCP
peer, or what `X-Forwarded-For` says when the peer is one of `limits.trusted_proxies`
(`protocol.guard.forwarded_client`). Limits are split between the `workers` server processes
(the kernel spreads connections over them), as the identity limit is in `coordinator.context`.

Route caps are sized from the message types (`protocol.messages` bounds) and the run's own
settings: a submission's cap is group_size completions of sampling.max_tokens token ids (as many
digits as the vocabulary needs, plus separators) and their proofs; a heartbeat's is
max_leases_per_worker lease ids. Every cap is at most `limits.max_body_bytes`; a route not
listed (every GET) accepts at most `OTHER_CAP` bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from coordinator.config import CoordinatorConfig
from coordinator.rules.limits import RateLimiter
from protocol import routes
from protocol.guard import Arrival, Guard, Networks, Refusal, ServerLimits, address_key
from protocol.messages import MAX_ID_CHARS, MAX_LEASES_PER_REQUEST
from protocol.proof import max_proof_b64_chars

ENVELOPE = 1024              # kind, signer, timestamp, nonce, signature and JSON punctuation
SMALL = 4 * 1024             # lease/claim/batch requests, eval reports: a few numbers
REGISTRATION = 32 * 1024     # a hardware report lists at most 64 GPUs of 200-character names
VERDICT = 64 * 1024          # a handful of checks with scalar statistics and a 2,000-character reason
MAX_JOBS_PER_CLAIM = 64      # protocol.messages.ClaimRequest.max_jobs
OTHER_CAP = 1024             # GETs and unknown routes carry no body worth reading
MAX_ACK_IDS = 4096           # protocol.messages.BatchAck.submission_ids
COMPLETION_KEYS = 96         # {"finish_reason":"length","proof":"","token_ids":[]} and separators


def identity_address(address: str, exempt: Networks) -> str:
    """What a worker's row keeps as its address, which the identities-per-address cap counts by
    (`coordinator.service.join`): the per-address limits' key (`protocol.guard.address_key`: an
    IPv4 address, IPv4-mapped ones included, or the /64 of an IPv6 address), or an exempt address
    as it is (so that it is still recognised as exempt). A stored key maps to itself."""
    return address if address in exempt else address_key(address)


def submission_cap(group_size: int, max_tokens: int, vocab_size: int) -> int:
    """The largest honest submission of this run, in bytes, with room for spaces after commas."""
    per_token = len(str(max(1, vocab_size - 1))) + 2
    completion = max_tokens * per_token + max_proof_b64_chars(max_tokens) + COMPLETION_KEYS
    claimed_rewards = 26 * group_size
    return ENVELOPE + 1024 + group_size * completion + claimed_rewards


def route_caps(cfg: CoordinatorConfig, vocab_size: int) -> dict[str, int]:
    """POST path -> the largest body that route accepts in this run."""
    lim = cfg.limits
    ids = min(MAX_LEASES_PER_REQUEST, lim.max_leases_per_worker) * (MAX_ID_CHARS + 3) + 2048
    caps = {
        routes.REGISTER: REGISTRATION,
        routes.HEARTBEAT: ENVELOPE + ids,
        routes.LEASES: ENVELOPE + SMALL,
        routes.LEASE_RELEASE: ENVELOPE + ids,
        routes.SUBMISSIONS: submission_cap(cfg.group_size, cfg.sampling.max_tokens, vocab_size),
        routes.VERIFICATION_CLAIM: ENVELOPE + SMALL,
        routes.VERIFICATION_RESUME: ENVELOPE + SMALL,
        routes.VERDICTS: VERDICT,
        routes.VERDICTS_BATCH: MAX_JOBS_PER_CLAIM * VERDICT,
        routes.TRAINER_BATCH: ENVELOPE + SMALL,
        routes.TRAINER_EVAL: ENVELOPE + SMALL,
        # up to MAX_ACK_IDS ids, each maybe also in `unused` with a reason (protocol.messages.BatchAck)
        routes.TRAINER_ACK: ENVELOPE + MAX_ACK_IDS * (2 * MAX_ID_CHARS + 24) + 2048,
        routes.POLICY: lim.max_body_bytes,  # a manifest grows with the model: only the global cap
    }
    return {path: min(cap, lim.max_body_bytes) for path, cap in caps.items()}


def body_cap(caps: dict[str, int], method: str, path: str) -> int:
    return caps.get(path, OTHER_CAP) if method == "POST" else OTHER_CAP


def server_limits(cfg: CoordinatorConfig) -> ServerLimits:
    """The connection-level limits of one of the coordinator's `workers` processes."""
    lim, n = cfg.limits, cfg.workers
    per_address = -(-lim.max_connections_per_address // n) if lim.max_connections_per_address else 0
    return ServerLimits(max_connections_per_address=per_address, header_timeout_s=lim.header_timeout_s,
                        body_timeout_s=lim.body_timeout_s, keepalive_timeout_s=lim.keepalive_timeout_s,
                        max_connections=lim.max_connections, trusted_proxies=tuple(lim.trusted_proxies),
                        exempt_addresses=tuple(lim.exempt_addresses))


def make_admit(cfg: CoordinatorConfig, caps: dict[str, int], requests: RateLimiter,
               clock: Callable[[], float]) -> Callable[[Arrival], Refusal | None]:
    """The admission rule (pure but for the two token buckets it charges and `clock`)."""
    lim, n = cfg.limits, cfg.workers
    exempt = Networks(lim.exempt_addresses)
    burst = max(1024.0, lim.byte_burst_per_address / n)
    nbytes = RateLimiter(lim.bytes_per_s_per_address / n, burst)

    def admit(a: Arrival) -> Refusal | None:
        free = a.address in exempt
        key = address_key(a.address)
        now = clock()
        if not free:
            wait = requests.take(key, now)
            if wait > 0:
                return Refusal(429, "rate_limited_address", f"too many requests from {key}; retry in {wait:.1f} s",
                               wait)
        cap = body_cap(caps, a.method, a.path)
        if a.content_length is not None and a.content_length > cap:
            what = f"{a.method} {a.path}" if a.method == "POST" and a.path in caps else f"{a.method} requests here"
            return Refusal(413, "too_large", f"request body of {a.content_length} bytes exceeds the limit of {cap} "
                                             f"for {what}")
        if not free and a.method == "POST" and lim.bytes_per_s_per_address > 0:
            cost = float(cap if a.content_length is None else a.content_length)
            wait = nbytes.take(key, now, min(cost, burst))
            if wait > 0:
                return Refusal(429, "byte_budget", f"{key} has sent too many request bytes; retry in {wait:.1f} s",
                               wait)
        return None

    return admit


def make_guard(cfg: CoordinatorConfig, caps: dict[str, int], requests: RateLimiter, clock: Callable[[], float],
               on_refuse: Callable[[str], None]) -> Guard:
    return Guard(server_limits(cfg), make_admit(cfg, caps, requests, clock), on_refuse)
