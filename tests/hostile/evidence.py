"""Hostile fixture: the archive-evidence spammer, and the cross-run replayer (issue 18 items 5, 7).

For the hostile-swarm test and `bench/`: plain protocol clients on a thread, against any
coordinator (in-process or not).

    from tests.hostile.evidence import EvidenceSpammer, replay

    with EvidenceSpammer("http://127.0.0.1:8700", hidden_size=32) as spam:
        ...                                   # the run publishes versions; a verifier judges
        spam.wait_for(versions=5, timeout_s=60)
    spam.spammed                              # [(version, peer id, HTTP status of the submission)]
    spam.submitted                            # ids of the submissions the coordinator took
    spam.seen                                 # every answer body the coordinator sent it

    status, detail = replay(captured_envelope, "http://127.0.0.1:8701", "/v1/trainer/batch")

What they do:
- `EvidenceSpammer`: polls GET /v1/policy every `poll_s`; for each policy version it has not
  spammed yet it makes a fresh Ed25519 identity (a throw-away: it never reuses one), registers it
  (solving the run's proof of work), leases one task and submits one group of garbage: every
  completion is `tokens` + EOS with an activation proof of random hidden states. The proof is
  well formed, so intake queues it; the verifier's proof check rejects it and bans the identity.
  Each such rejection claims its policy version: before the evidence budget
  (`checkpoints.rejected_max_versions` / `_bytes`) that pinned every checkpoint in the archive
  (200 of 200 versions kept instead of 35). It needs `join.identities_per_address` to let one
  address register many identities (0, or the spammer's address exempt), as a spammer with many
  addresses would have -- or `sources`: local addresses (127.0.0.2, ...) the identities take
  in turn, each speaking from its own. `completions(lease, version)` replaces the garbage with
  any completions (tests/hostile/scoring.PayloadWorker sends eval payloads this way).
- `replay(envelope, url, path)`: POSTs a captured signed envelope, byte for byte, to another
  service (another run reusing the keys, another role's route); returns (status, detail).

Stop: leaving the `with` block (or `.stop()`) ends the thread; nothing else is left running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from protocol import routes
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.http import SignedClient
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    Completion,
    EngineInfo,
    HardwareReport,
    Lease,
    LeaseRequest,
    LeaseResponse,
    PolicyInfo,
    Registration,
    RunInfo,
    Submission,
    SubmissionResponse,
)
from protocol.pow import solve_pow


def garbage_proof(n_tokens: int, hidden_size: int, seed: int) -> str:
    """A structurally valid activation proof of random hidden states (protocol.proof)."""
    import torch

    from protocol.proof import build_proof, to_b64

    g = torch.Generator().manual_seed(seed)
    return to_b64(build_proof(torch.randn(n_tokens, hidden_size, generator=g)))


class EvidenceSpammer:
    """One garbage submission per policy version, each from a throw-away identity (see module docstring)."""

    def __init__(self, url: str, *, hidden_size: int, tokens: tuple[int, ...] = (5, 6), poll_s: float = 0.2,
                 sources: list[str] | None = None,
                 completions: Callable[[Lease, int], list[Completion]] | None = None):
        self.url, self.hidden_size, self.tokens, self.poll_s = url.rstrip("/"), hidden_size, list(tokens), poll_s
        self.sources, self.completions = list(sources or []), completions or self.garbage
        self.spammed: list[tuple[int, str, int]] = []
        self.submitted: list[str] = []
        self.seen: list[bytes] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evidence-spammer", daemon=True)

    def __enter__(self) -> "EvidenceSpammer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "EvidenceSpammer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for(self, versions: int, timeout_s: float) -> bool:
        """True once `versions` versions were spammed (whatever the answers)."""
        deadline = time.monotonic() + timeout_s
        while len(self.spammed) < versions and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.spammed) >= versions

    def _client(self, n: int) -> httpx.Client:
        """A client speaking from the n-th of `sources` (else the default address) that keeps
        every answer body it receives in `seen`."""
        def keep(r: httpx.Response) -> None:
            self.seen.append(r.read())

        transport = httpx.HTTPTransport(local_address=self.sources[n % len(self.sources)]) if self.sources else None
        return httpx.Client(timeout=10.0, transport=transport, event_hooks={"response": [keep]})

    def _run(self) -> None:
        done: set[int] = set()
        with self._client(0) as poller:
            while not self._stop.is_set():
                try:
                    version = PolicyInfo.model_validate_json(poller.get(self.url + routes.POLICY).content).version
                    if version is not None and version not in done:
                        done.add(version)
                        with self._client(len(done)) as http:
                            self.spammed.append(self._spam_once(http, version))
                except (httpx.HTTPError, ProtocolError, ValueError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.poll_s)

    def garbage(self, lease: Lease, version: int) -> list[Completion]:
        """`tokens` + EOS for every seed, each with a proof of random hidden states."""
        toks = self.tokens + [lease.eos_token_id]
        return [Completion(token_ids=toks, finish_reason="eos",
                           proof=garbage_proof(len(toks), self.hidden_size, seed=version * 1000 + i))
                for i in range(len(lease.seeds))]

    def _spam_once(self, http: httpx.Client, version: int) -> tuple[int, str, int]:
        info = RunInfo.model_validate_json(http.get(self.url + routes.RUN).content)
        key = KeyPair.generate()
        client = SignedClient(self.url, key, client=http, run_id=info.run_id)
        pow_nonce = solve_pow(info.pow_challenge, key.public.hex, info.pow_difficulty) if info.pow_difficulty else None
        client.post_signed(routes.REGISTER, KIND_REGISTRATION,
                           Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1 << 30), pow_nonce=pow_nonce))
        leases = client.post_signed(routes.LEASES, KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), LeaseResponse).leases
        if not leases:
            return version, key.peer_id, 0
        lease = Lease.model_validate(leases[0].body)
        sub = Submission(lease_id=lease.lease_id, policy_version=lease.max_policy_version,
                         completions=self.completions(lease, version), engine=EngineInfo(name="spam", dtype="float32"))
        try:
            answer = client.post_signed(routes.SUBMISSIONS, KIND_SUBMISSION, sub, SubmissionResponse)
            self.submitted.append(answer.submission_id)
            return version, key.peer_id, 200
        except ProtocolError as exc:
            return version, key.peer_id, int(getattr(exc, "status", 0))


def replay(envelope: Envelope | str, url: str, path: str) -> tuple[int, str]:
    """POST a captured envelope unchanged to `url` + `path`: (HTTP status, detail)."""
    body = envelope.model_dump_json() if isinstance(envelope, Envelope) else envelope
    r = httpx.post(url.rstrip("/") + path, content=body, headers={"content-type": "application/json"}, timeout=10.0)
    try:
        detail = str(r.json().get("detail", ""))
    except ValueError:
        detail = r.text[:300]
    return r.status_code, detail
