"""Load test of the coordinator: 100 simulated workers against a real coordinator process,
with a simulated verifier and trainer attached, on SQLite and on PostgreSQL.

    python bench/coordinator.py                         # SQLite and PostgreSQL, 60 s each
    python bench/coordinator.py --db sqlite --duration 20 --rate 300
    python bench/coordinator.py --saturate              # no pacing: as fast as the server answers

Each simulated worker registers, heartbeats every 5 s, polls GET /v1/policy every 10 s, leases
tasks (2 per request) and submits realistic payloads: 16 completions of 256 tokens, each with
a real activation proof (protocol.proof, hidden size of the model) — about 70 KB per
submission; one answered 429 is sent again after its Retry-After, as the worker's spool does.
Workers are paced so that together they offer `--rate` submissions/s (or run unpaced with
--saturate). A verifier claims queued submissions and posts a signed verdict for
each (accepting; a claim's verdicts in one request, as `verifier.service` does), and a trainer
long-polls training batches and publishes a new policy version every 10 s, so the window, the
buffer and the verification queue all move. The coordinator's pacing of the swarm (the lease
bound from what the trainer takes, the lanes of identities without verified work) is off: the
bench measures what the server can take, not the simulated trainer's pace.

PostgreSQL comes from Debian's packages (installed with apt-get when missing) and runs as a
throwaway cluster on a Unix socket. Workers run in `--client-procs` processes (asyncio +
httpx), the verifier and trainer in this process; everything shares the machine's cores with
the coordinator, so numbers on a 2-core machine are a floor, and noisy when anything else runs.
Printed: sustained submissions/s over the measured window (after warm-up), verdicts/s, groups
trained/s, and p50/p99 latency per endpoint as seen by the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEARTBEAT_S = 5.0
POLICY_POLL_S = 10.0
PUBLISH_EVERY_S = 10.0
CLAIM_JOBS = 16  # jobs per claim of the simulated verifier (the real one's `batch_jobs` is 8)


# -- fast, exact envelope building for the simulated clients ---------------------------------
class Signer:
    """Builds signed envelopes as JSON text without re-encoding the large, constant part of a
    submission: the signed bytes come from protocol.envelope (`Envelope.signing_bytes_with`) over
    pre-encoded pieces, so the bench measures the server, not client-side JSON."""

    def __init__(self, key, run_id: str):
        self.key = key
        self.hex = key.public.hex
        self.run_id = run_id

    def envelope(self, kind: str, canonical_body: str) -> str:
        import time as _t

        from protocol.envelope import AUDIENCE_COORDINATOR, Envelope

        nonce = os.urandom(16).hex()
        ts = float(_t.time())
        head = Envelope.model_construct(kind=kind, run_id=self.run_id, audience=AUDIENCE_COORDINATOR, body={},
                                        signer=self.hex, timestamp=ts, nonce=nonce, signature="")
        sig = self.key.sign(head.signing_bytes_with(canonical_body.encode()))
        return ('{"kind":"' + kind + '","run_id":"' + self.run_id + '","audience":"' + AUDIENCE_COORDINATOR
                + '","body":' + canonical_body + ',"signer":"' + self.hex + '","timestamp":' + repr(ts)
                + ',"nonce":"' + nonce + '","signature":"' + sig + '"}')

    def model(self, kind: str, body) -> str:
        from protocol.canonical import canonical_bytes

        return self.envelope(kind, canonical_bytes(body.model_dump(mode="json")).decode())


def payload_pieces(group_size: int, tokens: int, hidden: int, vocab: int, eos: int) -> tuple[str, str]:
    """Canonical JSON of a group's completions and of the engine info (constant per run)."""
    import random

    import torch

    from protocol.canonical import canonical_bytes
    from protocol.messages import Completion, EngineInfo
    from protocol.proof import build_proof, to_b64

    proof = to_b64(build_proof(torch.randn(tokens, hidden)))
    rng = random.Random(0)
    comps = []
    for _ in range(group_size):
        ids = [rng.randrange(3, vocab) for _ in range(tokens)]
        ids = [i if i != eos else eos + 1 for i in ids]
        comps.append(Completion(token_ids=ids, finish_reason="length", proof=proof).model_dump(mode="json"))
    engine = EngineInfo(name="bench", version="0", dtype="bfloat16", device="cpu").model_dump(mode="json")
    return canonical_bytes(comps).decode(), canonical_bytes(engine).decode()


def submission_body(comps: str, engine: str, lease_id: str, version: int) -> str:
    return ('{"claimed_rewards":null,"completions":' + comps + ',"engine":' + engine + ',"lease_id":"' + lease_id
            + '","policy_version":' + str(version) + "}")


def check_pieces(comps: str, engine: str) -> None:
    """The hand-assembled canonical body must equal protocol.canonical's, byte for byte, and a
    hand-assembled envelope around it must open with protocol.envelope."""
    from protocol.canonical import canonical_bytes
    from protocol.messages import Submission

    body = submission_body(comps, engine, "l-0", 3)
    sub = Submission.model_validate(json.loads(body))
    assert canonical_bytes(sub.model_dump(mode="json")).decode() == body, "bench payload is not canonical"
    from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, open_envelope
    from protocol.identity import KeyPair

    env = Envelope.model_validate_json(Signer(KeyPair.generate(), "r").envelope("submission", body))
    open_envelope(env, "submission", Submission, run_id="r", audience=AUDIENCE_COORDINATOR)  # signature checks out


# -- latency bookkeeping ---------------------------------------------------------------------
class Recorder:
    """Latencies per endpoint of requests that finish after `t_measure` (wall clock)."""

    def __init__(self, t_measure: float):
        self.t_measure = t_measure
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.ok: dict[str, int] = {}

    def add(self, name: str, t0: float, ok: bool) -> bool:
        """Record a request started at perf_counter `t0`; True if it counts (measured window)."""
        dt = time.perf_counter() - t0
        if time.time() < self.t_measure:
            return False
        self.samples.setdefault(name, []).append(dt)
        d = self.ok if ok else self.errors
        d[name] = d.get(name, 0) + 1
        return True

    def merge(self, other: dict) -> None:
        for k, v in other["samples"].items():
            self.samples.setdefault(k, []).extend(v)
        for k, v in other["ok"].items():
            self.ok[k] = self.ok.get(k, 0) + v
        for k, v in other["errors"].items():
            self.errors[k] = self.errors.get(k, 0) + v

    def dump(self) -> dict:
        return {"samples": self.samples, "ok": self.ok, "errors": self.errors}


# -- a lean keep-alive HTTP/1.1 client -------------------------------------------------------
class Conn:
    """One keep-alive HTTP/1.1 connection over asyncio streams. Written here because httpx
    spends about a millisecond of CPU per request, so 100 simulated workers on the same 2 cores
    as the server would measure the load generator instead of the coordinator."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.retry_after = 0.0  # the last answer's Retry-After header (seconds; 0 without one)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                self.writer.write(head + body)
                await self.writer.drain()
                status = int((await self.reader.readline()).split(b" ", 2)[1])
                length, close = 0, False
                self.retry_after = 0.0
                while True:
                    line = await self.reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                    elif k == b"retry-after":
                        self.retry_after = float(v)
                data = await self.reader.readexactly(length) if length else b""
                if close:
                    await self.close()
                return status, data
            except (ConnectionError, asyncio.IncompleteReadError, IndexError, ValueError):
                await self.close()
                if attempt:
                    raise ConnectionError(f"{method} {path}: connection lost") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


# -- simulated workers (in client processes) -------------------------------------------------
def worker_process(url: str, first: int, count: int, args: dict, t_measure: float, t_end: float, out) -> None:
    asyncio.run(_workers(url, first, count, args, t_measure, t_end, out))


async def _workers(url, first, count, args, t_measure, t_end, out) -> None:
    from protocol.identity import KeyPair
    from protocol.messages import HardwareReport, Heartbeat, LeaseRequest, Registration

    rec = Recorder(t_measure)
    comps, engine = args["comps"], args["engine"]
    interval = 0.0 if args["saturate"] else args["workers"] / args["rate"] * args["tasks_per_lease"]
    host, port = _host_port(url)

    async def one(i: int) -> None:
        conn = Conn(host, port)

        async def call(name: str, method: str, path: str, content: str = "") -> tuple[int, bytes] | None:
            t0 = time.perf_counter()
            try:
                status, data = await conn.request(method, path, content.encode())
            except (ConnectionError, OSError):
                rec.add(name, t0, False)
                return None
            rec.add(name, t0, status < 400)
            return status, data

        signer = Signer(KeyPair.from_seed((i + 1).to_bytes(32, "big")), args["run_id"])
        reg = Registration(hardware=HardwareReport(cpu_count=8, ram_bytes=1 << 34), client_version="bench")
        await call("register", "POST", "/v1/workers/register", signer.model("registration", reg))
        await asyncio.sleep((i % count) / max(1, count) * max(interval, 0.05))  # spread the starts
        next_hb = next_poll = next_work = time.time()
        lease_req = LeaseRequest(max_tasks=args["tasks_per_lease"])
        while time.time() < t_end:
            now = time.time()
            if now >= next_hb:
                next_hb = now + HEARTBEAT_S
                await call("heartbeat", "POST", "/v1/workers/heartbeat", signer.model("heartbeat", Heartbeat(status="bench")))
            if now >= next_poll:
                next_poll = now + POLICY_POLL_S
                await call("policy", "GET", "/v1/policy")
            r = await call("lease", "POST", "/v1/leases", signer.model("lease_request", lease_req))
            if r is None or r[0] != 200:
                await asyncio.sleep(conn.retry_after or 0.5)
                continue
            body = json.loads(r[1])
            leases = [e["body"] for e in body["leases"]]
            if not leases:
                await asyncio.sleep(body.get("retry_after_s") or 0.5)
                continue
            next_work += interval
            wait = next_work - time.time()
            if wait > 0:
                await asyncio.sleep(wait)  # "generation"
            else:
                next_work = time.time()
            for lease in leases:
                body = submission_body(comps, engine, lease["lease_id"], lease["max_policy_version"])
                # as the worker's spool does: a submission answered 429 is sent again after Retry-After
                while (r := await call("submit", "POST", "/v1/submissions", signer.envelope("submission", body))) \
                        is not None and r[0] == 429 and time.time() < t_end:
                    await asyncio.sleep(conn.retry_after or 1.0)
        await conn.close()

    await asyncio.gather(*(one(i) for i in range(first, first + count)))
    out.put(rec.dump())


# -- simulated verifier and trainer (in this process) ---------------------------------------
async def verifier_and_trainer(url: str, verifier, operator, model_dir: Path, run_id: str, t_measure: float,
                               t_end: float, n_verifiers: int) -> tuple[Recorder, dict]:
    from protocol import routes
    from protocol.envelope import Envelope, envelope_digest
    from protocol.manifest import build_manifest, sign_manifest
    from protocol.messages import BatchAck, BatchRequest, CheckResult, ClaimRequest, Verdict

    rec = Recorder(t_measure)
    counts = {"verdicts": 0, "groups": 0, "versions": 1}
    vs = Signer(verifier, run_id)
    ts = Signer(operator, run_id)
    host, port = _host_port(url)

    async def verify_loop() -> None:
        """One verifier process, as `verifier.service` works: claim jobs, post the claim's
        verdicts in one request (`/v1/verdicts/batch`)."""
        conn = Conn(host, port)

        def verdict(job: dict) -> str:
            # A full-check acceptance must name the proof and sampling checks (coordinator.rules.verdicts).
            checks = [CheckResult(name="proof", passed=True), CheckResult(
                name="sampling", passed=True, stats={"positions": 0, "not_argmax": 0})] if job["full_check"] else []
            v = Verdict(submission_id=job["submission_id"], accepted=True, full_check=job["full_check"], checks=checks,
                        submission_sha256=envelope_digest(Envelope.model_validate(job["submission"])),
                        lease_sha256=envelope_digest(Envelope.model_validate(job["lease"])))
            return vs.model("verdict", v)

        while time.time() < t_end:
            t0 = time.perf_counter()
            status, data = await conn.request("POST", routes.VERIFICATION_CLAIM,
                                              vs.model("verification_claim", ClaimRequest(max_jobs=CLAIM_JOBS)).encode())
            rec.add("claim", t0, status == 200)
            jobs = json.loads(data).get("jobs", []) if status == 200 else []
            if not jobs:
                await asyncio.sleep(0.05)
                continue
            t0 = time.perf_counter()
            body = '{"envelopes":[' + ",".join(verdict(j) for j in jobs) + "]}"
            status, data = await conn.request("POST", routes.VERDICTS_BATCH, body.encode())
            done = sum(r["status"] == 200 for r in json.loads(data)["results"]) if status == 200 else 0
            if rec.add("verdicts", t0, status == 200 and done == len(jobs)):
                counts["verdicts"] += done
        await conn.close()

    async def train_loop() -> None:
        conn = Conn(host, port)
        version, next_publish = 0, time.time() + PUBLISH_EVERY_S
        while time.time() < t_end:
            t0 = time.perf_counter()
            req = BatchRequest(max_groups=256, min_policy_version=0, wait_s=1.0)
            status, data = await conn.request("POST", "/v1/trainer/batch", ts.model("batch_request", req).encode())
            ids = [g["submission_id"] for g in json.loads(data)["groups"]] if status == 200 else []
            if rec.add("batch", t0, status == 200) and status == 200:
                counts["groups"] += len(ids)
            if ids:  # a trainer acknowledges what it spooled, or the groups are handed out again
                t0 = time.perf_counter()
                status, _ = await conn.request("POST", "/v1/trainer/ack",
                                               ts.model("batch_ack", BatchAck(submission_ids=ids)).encode())
                rec.add("ack", t0, status == 200)
            if time.time() >= next_publish:
                version += 1
                next_publish += PUBLISH_EVERY_S
                m = build_manifest(model_dir, run_id=run_id, version=version, step=version)
                t0 = time.perf_counter()
                status, _ = await conn.request("POST", "/v1/policy", sign_manifest(m, operator).model_dump_json().encode())
                rec.add("publish", t0, status == 200)
                counts["versions"] += 1
        await conn.close()

    await asyncio.gather(train_loop(), *(verify_loop() for _ in range(n_verifiers)))
    return rec, counts


# -- server CPU time (load-independent efficiency) --------------------------------------------
def _proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its children (Linux /proc)."""
    total = 0
    for p in _proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """This process alone (its children, the coordinator among them, are counted separately)."""
    t = os.times()
    return t.user + t.system


# -- one run ---------------------------------------------------------------------------------
def start_coordinator(tmp: Path, cfg) -> subprocess.Popen:
    from protocol.config import dump_toml

    cfg_path = tmp / "coordinator.toml"
    cfg_path.write_text(dump_toml(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "swarmrl", "coordinator", "--config", str(cfg_path)],
                            stdout=open(tmp / "coordinator.log", "wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    port_file = cfg.data_dir / "coordinator.port"
    deadline = time.time() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("coordinator did not start:\n" + (tmp / "coordinator.log").read_text()[-2000:])
        time.sleep(0.1)
    return proc


def start_replicas(tmp: Path, cfg, replicas: int) -> list[subprocess.Popen]:
    """`replicas` coordinator instances sharing one database (PostgreSQL) and one key, each
    with a data folder of its own and a free port (each is the leader of its own `workers`
    processes, so each runs the periodic sweep; the bench turns the archive off for them)."""
    if replicas == 1:
        return [start_coordinator(tmp, cfg)]
    procs = []
    for r in range(replicas):
        d = tmp / f"replica-{r}"
        d.mkdir(parents=True, exist_ok=True)
        procs.append(start_coordinator(d, cfg.model_copy(update={"data_dir": d / "coordinator"})))
    return procs


def replica_urls(tmp: Path, cfg, replicas: int) -> list[str]:
    dirs = [cfg.data_dir] if replicas == 1 else [tmp / f"replica-{r}" / "coordinator" for r in range(replicas)]
    return [f"http://127.0.0.1:{(d / 'coordinator.port').read_text().strip()}" for d in dirs]


def start_haproxy(tmp: Path, backends: list[str]) -> tuple[subprocess.Popen, str]:
    """HAProxy (Debian's package, installed with apt-get when missing) on a free loopback port,
    balancing HTTP requests round-robin over `backends`; returns it and its URL."""
    import socket

    if shutil.which("haproxy") is None:
        print("installing HAProxy with apt-get ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = "".join(f"    server r{i} {u.split('://', 1)[1]} maxconn 2000\n" for i, u in enumerate(backends))
    cfg = (f"global\n    maxconn 8000\n"
           f"defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n"
           # `http-reuse always` (sharing server connections between clients) left requests
           # waiting up to the 120 s server timeout under 1,000 clients (the simulated verifier's
           # claims and the trainer's batches among them: 1.1 verdicts/s, nothing trained) and
           # halved what one replica took (28-29 submissions/s against 58 with `safe`).
           f"    option http-keep-alive\n    http-reuse safe\n"
           f"frontend coordinator\n    bind 127.0.0.1:{port}\n    maxconn 8000\n    default_backend replicas\n"
           f"backend replicas\n    balance roundrobin\n{servers}")
    (tmp / "haproxy.cfg").write_text(cfg)
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], stdout=open(tmp / "haproxy.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("haproxy did not start:\n" + (tmp / "haproxy.log").read_text()[-2000:])
            time.sleep(0.1)


def run_one(db: str, args, tmp: Path) -> dict:
    import httpx

    from coordinator.config import LOOPBACK, CoordinatorConfig
    from protocol.identity import KeyPair
    from protocol.manifest import build_manifest, sign_manifest
    from swarmrl.modelkit import init_tiny_model

    model = tmp / "model"
    info = init_tiny_model(model, hidden_size=args.hidden, num_layers=1, num_heads=2, num_kv_heads=1)
    operator, verifier = KeyPair.generate(), KeyPair.generate()
    pg = None
    url = ""
    if db == "postgres":
        from coordinator.store.pgtemp import TempPostgres, find_bin

        if find_bin() is None:
            print("installing PostgreSQL with apt-get ...", flush=True)
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        pg = TempPostgres(port=args.pg_port).start()
        url = pg.url
    cfg = CoordinatorConfig(
        operator_key=operator.public.hex, verifier_keys=[verifier.public.hex], model=str(model),
        data_dir=tmp / "coordinator", key_file=tmp / "coordinator" / "coordinator.key", port=0,
        database_url=url, group_size=args.group_size, async_window=2, lease_ttl_s=120,
        sampling={"temperature": 1.0, "max_tokens": args.tokens},
        limits={"requests_per_s_per_worker": 1000, "burst": 2000, "max_leases_per_worker": 64,
                "exempt_addresses": LOOPBACK, "intake_established_after": 1},  # every simulated worker is on loopback
        join={"pow_difficulty": 0},  # registration's proof of work is the client's cost, not the server's
        # The server's capacity, not the run's pacing: the swarm's lease bound (what the trainer
        # takes per version) and the lanes that keep workers without verified work apart would
        # hold a thousand fresh simulated workers to the simulated trainer's pace (2.2
        # submissions/s on SQLite with them on, all 1,000 new identities waiting for room).
        lease_sizing={"enabled": False}, verification_newcomer_wait_s=0.0,
        archive=not args.no_archive and args.replicas == 1, workers=args.server_procs)
    if db == "sqlite" and args.replicas > 1:
        raise SystemExit("replicas share one database: --replicas > 1 needs --db postgres")
    servers = start_replicas(tmp, cfg, args.replicas)
    balancer = None
    try:
        backends = replica_urls(tmp, cfg, args.replicas)
        base = backends[0]
        if args.balancer == "haproxy" or args.replicas > 1:
            balancer, base = start_haproxy(tmp, backends)
        coordinator_cpu = lambda: sum(cpu_seconds(p.pid) for p in servers)  # noqa: E731
        with httpx.Client(base_url=base) as http:
            m = build_manifest(model, run_id=cfg.run_id, version=0, step=0)
            http.post("/v1/policy", content=sign_manifest(m, operator).model_dump_json()).raise_for_status()
        comps, engine = payload_pieces(args.group_size, args.tokens, args.hidden, info["vocab_size"], 1)
        check_pieces(comps, engine)
        body_kb = len(Signer(verifier, cfg.run_id).envelope("submission", submission_body(comps, engine, "l-" + "0" * 24,
                                                                                        0))) / 1024
        t_start = time.time() + 2.0
        t_measure = t_start + args.warmup
        t_end = t_measure + args.duration
        wargs = dict(comps=comps, engine=engine, workers=args.workers, rate=args.rate, saturate=args.saturate,
                     tasks_per_lease=args.tasks_per_lease, run_id=cfg.run_id)
        q: mp.Queue = mp.get_context("spawn").Queue()
        per = -(-args.workers // args.client_procs)
        procs = []
        for p in range(args.client_procs):
            n = min(per, args.workers - p * per)
            if n <= 0:
                break
            procs.append(mp.get_context("spawn").Process(
                target=worker_process, args=(base, p * per, n, wargs, t_measure, t_end, q), daemon=True))
        for pr in procs:
            pr.start()
        cpu_marks: dict[str, float] = {}

        def sample_cpu() -> None:
            time.sleep(max(0.0, t_measure - time.time()))
            cpu_marks["start"] = coordinator_cpu()
            cpu_marks["clients_start"] = sum(cpu_seconds(pr.pid) for pr in procs) + _own_cpu()
            time.sleep(max(0.0, t_end - time.time()))
            cpu_marks["end"] = coordinator_cpu()
            cpu_marks["clients_end"] = sum(cpu_seconds(pr.pid) for pr in procs) + _own_cpu()

        import threading

        sampler = threading.Thread(target=sample_cpu, daemon=True)
        sampler.start()
        rec, counts = asyncio.run(verifier_and_trainer(base, verifier, operator, model, cfg.run_id, t_measure,
                                                       t_end, args.verifiers))
        sampler.join(timeout=30)
        for _ in procs:
            rec.merge(q.get(timeout=120))
        for pr in procs:
            pr.join(timeout=30)
        with httpx.Client(base_url=base) as http:
            stats = http.get("/v1/stats").json()
        # The coordinator's own histograms, per replica (each counts what it handled).
        server = {}
        for i, u in enumerate(backends):
            for route, v in server_latency(httpx.get(u + "/metrics").text).items():
                server[route if len(backends) == 1 else f"{route}@r{i}"] = v
        server_cpu = cpu_marks.get("end", 0.0) - cpu_marks.get("start", 0.0)
        client_cpu = cpu_marks.get("clients_end", 0.0) - cpu_marks.get("clients_start", 0.0)
        return {"db": db, "rec": rec, "counts": counts, "stats": stats, "body_kb": body_kb, "server": server,
                "server_cpu_s": server_cpu, "client_cpu_s": client_cpu}
    finally:
        for proc in [*servers, *([balancer] if balancer else [])]:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if pg is not None:
            pg.remove()


def server_latency(metrics_text: str) -> dict[str, dict]:
    """Per route: request count, mean and bucket-interpolated p50/p99 of the coordinator's own
    handling time (swarmrl_coordinator_request_seconds), over the whole run."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("swarmrl_coordinator_request_seconds"):
            continue
        name, value = line.rsplit(" ", 1)
        labels = dict(kv.split("=", 1) for kv in name[name.index("{") + 1:name.rindex("}")].split(",")) if "{" in name else {}
        route = labels.get("route", "").strip('"')
        if name.startswith("swarmrl_coordinator_request_seconds_bucket"):
            le = labels["le"].strip('"')
            buckets.setdefault(route, []).append((float("inf") if le == "+Inf" else float(le), float(value)))
        elif name.startswith("swarmrl_coordinator_request_seconds_sum"):
            sums[route] = float(value)
        elif name.startswith("swarmrl_coordinator_request_seconds_count"):
            counts[route] = float(value)

    def quantile(bs: list[tuple[float, float]], q: float) -> float:
        bs = sorted(bs)
        total = bs[-1][1]
        prev_le, prev_n = 0.0, 0.0
        for le, n in bs:
            if n >= q * total:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * ((q * total - prev_n) / max(n - prev_n, 1e-9))
            prev_le, prev_n = le, n
        return prev_le

    return {r: {"n": counts.get(r, 0), "mean": sums.get(r, 0) / max(counts.get(r, 1), 1),
                "p50": quantile(b, 0.5), "p99": quantile(b, 0.99)} for r, b in buckets.items() if b and b[-1][1]}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report(res: dict, args) -> None:
    rec, counts, dur = res["rec"], res["counts"], args.duration
    subs = rec.ok.get("submit", 0)
    replicas = f"{args.replicas} replicas x " if args.replicas > 1 else ""
    print(f"\n== coordinator ({replicas}{args.server_procs} process{'es' if args.server_procs > 1 else ''}) on {res['db']}: {args.workers} workers, {dur:.0f} s measured after {args.warmup:.0f} s "
          f"warm-up, {args.group_size}x{args.tokens} tokens per submission ({res['body_kb']:.0f} KB), offered "
          f"{'unpaced (saturate)' if args.saturate else f'{args.rate:.0f} submissions/s'}")
    print(f"   sustained: {subs / dur:7.1f} submissions/s   {counts['verdicts'] / dur:7.1f} verdicts/s   "
          f"{counts['groups'] / dur:7.1f} groups trained/s   {counts['versions']} policy versions")
    if subs:
        per = 1000 * res["server_cpu_s"] / subs
        print(f"   coordinator CPU: {res['server_cpu_s']:.1f} s over {dur:.0f} s = {per:.2f} ms per submission, all "
              f"endpoints' work included (one core sustains ~{1000 / per:.0f} submissions/s at this cost); "
              f"load generator CPU: {res['client_cpu_s']:.1f} s")
    print(f"   {'endpoint':<10} {'ok':>8} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name in ("submit", "lease", "heartbeat", "policy", "register", "claim", "verdicts", "batch", "ack", "publish"):
        xs = rec.samples.get(name, [])
        if not xs:
            continue
        note = "  (long-poll, wait_s=1)" if name == "batch" else ""
        print(f"   {name:<10} {rec.ok.get(name, 0):>8} {rec.errors.get(name, 0):>7} {len(xs) / dur:>8.1f} "
              f"{1000 * _pct(xs, 0.5):>8.1f} {1000 * _pct(xs, 0.99):>8.1f} {1000 * max(xs):>8.1f}{note}")
    print("   server-side handling time (coordinator's own histogram, whole run incl. warm-up):")
    for route, v in sorted(res["server"].items(), key=lambda kv: -kv[1]["n"]):
        print(f"     {route:<12} n={int(v['n']):>7}  mean {1000 * v['mean']:7.2f} ms  ~p50 {1000 * v['p50']:7.2f} ms  "
              f"~p99 {1000 * v['p99']:7.2f} ms")
    st = res["stats"]
    print(f"   end state: submissions {st['submissions']}, buffer depth {st['buffer']['depth']}, "
          f"dropped stale {st['buffer']['dropped_stale']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=250.0, help="offered submissions/s (all workers together)")
    ap.add_argument("--saturate", action="store_true", help="no pacing: submit as fast as answers come")
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the model (and of the proofs)")
    ap.add_argument("--tasks-per-lease", type=int, default=2)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--server-procs", type=int, default=2, help="coordinator processes (its `workers` setting)")
    ap.add_argument("--verifiers", type=int, default=2, help="concurrent verifier loops")
    ap.add_argument("--no-archive", action="store_true")
    ap.add_argument("--pg-port", type=int, default=55439)
    ap.add_argument("--replicas", type=int, default=1, help="coordinator instances sharing PostgreSQL, behind "
                    "HAProxy (> 1 needs --db postgres; bench/many_workers.py compares 1 and 2)")
    ap.add_argument("--balancer", choices=["none", "haproxy"], default="none",
                    help="put HAProxy in front even of one replica (always with --replicas > 1)")
    ap.add_argument("--json", default="", help="also write each run's figures here (bench/many_workers.py)")
    args = ap.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    print(f"bench/coordinator.py on {os.cpu_count()} cores (shared with the clients; noisy if anything else runs)")
    for db in dbs:
        tmp = Path(tempfile.mkdtemp(prefix=f"swarmrl-bench-{db}-"))
        try:
            res = run_one(db, args, tmp)
            report(res, args)
            if args.json:
                rec = res["rec"]
                Path(args.json).write_text(json.dumps({
                    "db": db, "replicas": args.replicas, "duration": args.duration, "ok": rec.ok,
                    "errors": rec.errors, "server_cpu_s": res["server_cpu_s"], "counts": res["counts"],
                    "pct": {ep: {"p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99)} for ep, xs in rec.samples.items()}}))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
