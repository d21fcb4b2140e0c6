"""Every attacker of tests/hostile at once against a local swarm: the one assembly that the
hostile-swarm test (tests/integration/test_hostile_swarm.py) and bench/hostile.py share.

    relays = HostileRelays().start()                  # before the plan: their URLs go in its configs
    settings = hostile_settings(SwarmSettings(...), relays, victims=("worker-2", "verifier"))
    plan = plan_swarm(root, model, settings)
    relays.follow(plan.relay_url)                     # the drip relays serve the honest relay's bytes
    with ProcessGroup(plan.logs) as group:
        start_swarm(plan, group)
        with Campaign.against(plan, relays, tokenizer, hidden_size=64, targets=Targets(...)) as attack:
            ...                                       # the run goes on under attack
        attack.summary(), relays.hits()               # what each attacker did and was answered

`NicedCampaign(Spec(...), nice=10, idle=False)` runs a campaign in a process of its own at a
lower CPU priority (as the local swarm runs its workers; `idle=True`: also SCHED_IDLE): on one machine the attackers would otherwise
take cycles from the services that a real attacker's own machines would not (bench/hostile.py).
`Burner(cores, nice, idle=False)` is its control: a process at the same priority that only spins `cores`
of a core, so a bench can show what the attackers' CPU alone costs the swarm.

How each attacker reaches its victims, as it would in a deployment:

| attack | name | how it reaches the victims |
|---|---|---|
| eval payload | `payload` | a worker (a throw-away identity per policy version, each from its own 127.0.0.x address) whose completions are code; the run's scorer `eval`s worker text (`hostile_settings` sets the task option `scorer` to tests.hostile.scoring:eval_scorer and allows that module) |
| drip relay | `drip` | listed before the honest relay in the victims' `relays` config, and advertised over libp2p |
| gzip-bomb relay | `gzip` | the same, another relay |
| unsigned 4 MB flood | `flood` | waves of `flood_n` bodies to POST /v1/submissions from as many addresses |
| slowloris | `slowloris` | connections to the coordinator and the honest relay sending a byte a second (headers, body, or nothing) from other addresses, opened again as the servers close them |
| advert flood | `adverts` | an attacker's libp2p node bootstrapped to the coordinator's; every `advert_every_s` it publishes relay adverts from fresh keys, pointing at hostile relays that only adverts name and at dead ports |
| rejected-submission spammer | `spam` | tests/hostile/evidence.EvidenceSpammer, a garbage group per version, each identity from its own address |
| lease squatters | `squat` | tests/hostile/squat.LeaseSquatter: `squat_n` throw-away identities, each from its own address, that take all the leases they may and never submit |

Attackers speak from 127.0.0.2 and up; the honest processes from 127.0.0.1, which the local
swarm exempts from the per-address limits, so every per-address limit applies to attackers.
The payloads (`Targets`) try to write a marker file, to read a key file (a reward above 0
would show success) and to connect to a canary port. Stop: leaving the `with` block stops
every attacker thread and the p2p node; `HostileRelays.stop()` closes the relays.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.hostile.evidence import EvidenceSpammer
from tests.hostile.flood import BigBodies, Slowloris
from tests.hostile.relays import DripRelay, GzipBombRelay, flood_relay_adverts
from tests.hostile.scoring import EVAL_SCORER, PAYLOADS, payload_expr, payload_worker
from tests.hostile.squat import LeaseSquatter

ALL = ("payload", "drip", "gzip", "flood", "slowloris", "adverts", "spam", "squat")
SCORER_MODULE = EVAL_SCORER.split(":")[0]
ROOT = Path(__file__).resolve().parents[2]
TASKS = {"max_operand": 9}   # 160 training tasks: an honest group rarely repeats an earlier one
HIDDEN = 64


def addresses(first: int, n: int) -> list[str]:
    """n loopback addresses from 127.0.0.<first> (Linux routes all of 127.0.0.0/8 to lo)."""
    return [f"127.0.0.{first + i}" for i in range(n)]


class HostileRelays:
    """The hostile relays of a campaign: `drip` and `gzip` go in victims' configs (and adverts);
    `advert_drip` and `advert_gzip` are named only by adverts, so their hits show that adverts
    reached a victim. Made before the plan (configs need their URLs); `follow` points the drip
    relays at the honest relay once the plan has its URL."""

    def __init__(self, drip_every_s: float = 2.0, inflated_mib: int = 256):
        self.drip = DripRelay(upstream="http://127.0.0.1:9", every_s=drip_every_s)
        self.gzip = GzipBombRelay(inflated_mib=inflated_mib)
        self.advert_drip = DripRelay(upstream="http://127.0.0.1:9", every_s=drip_every_s)
        self.advert_gzip = GzipBombRelay(inflated_mib=inflated_mib)
        self.all = [self.drip, self.gzip, self.advert_drip, self.advert_gzip]

    def follow(self, honest_relay_url: str) -> None:
        for r in (self.drip, self.advert_drip):
            r.upstream = honest_relay_url.rstrip("/")

    def start(self) -> "HostileRelays":
        for r in self.all:
            r.start()
        return self

    def stop(self) -> None:
        for r in self.all:
            r.stop()

    def hits(self) -> dict[str, int]:
        """Requests each relay got (all kinds)."""
        return {name: sum(getattr(self, name).hits.values())
                for name in ("drip", "gzip", "advert_drip", "advert_gzip")}


def hostile_settings(base: Any, relays: HostileRelays | None, victims: tuple[str, ...] = ("worker-2", "verifier"),
                     max_tokens: int = 256, attacks: tuple[str, ...] = ALL) -> Any:
    """`base` (a swarmrl.swarm.SwarmSettings) made ready for a campaign: tasks scored by
    `eval_scorer` (the module allowed in every role and importable by its sandbox), leases long
    enough for the payloads, and the hostile relays of `attacks` ("drip", "gzip") before the
    honest one in `victims`' configs."""
    env = {**base.env, "SWARMRL_SCORER_MODULES": SCORER_MODULE, "PYTHONPATH": str(ROOT)}
    listed = [r.url for name, r in (("drip", relays.drip), ("gzip", relays.gzip)) if name in attacks] if relays else []
    extra = {**base.extra_relays, **({v: listed for v in victims} if listed else {})}
    return dataclasses.replace(base, task_options={**base.task_options, "scorer": EVAL_SCORER}, env=env,
                               extra_relays=extra, max_tokens=max(base.max_tokens, max_tokens))


def build_model(directory: Path, seed: int = 0) -> Path:
    """The tiny model of the hostile runs, warm-started on TASKS so that rewards vary."""
    from swarmrl.modelkit import init_tiny_model, warm_start

    init_tiny_model(directory, hidden_size=HIDDEN, num_layers=2, seed=seed)
    warm_start(directory, max_steps=120, seed=seed, task_options=TASKS, lr=3e-3)
    return directory


def swarm_settings(honest_workers: int, relays: HostileRelays | None, seed: int = 0,
                   attacks: tuple[str, ...] = ALL) -> Any:
    """The swarm of the hostile runs: `honest_workers`, the last of which (and the verifier) lists
    the hostile relays of `attacks` first (`hostile_settings`)."""
    from swarmrl.swarm import SwarmSettings

    base = SwarmSettings(honest_workers=honest_workers, cheaters=0, group_size=4, task_options=TASKS,
                         groups_per_step=4, lr=1e-4, eval_every=0, worker_max_tasks=2, seed=seed)
    return hostile_settings(base, relays, victims=(f"worker-{honest_workers}", "verifier"), attacks=attacks)


@dataclass
class Targets:
    """What the payloads reach for: `marker` (a file in a folder anyone may write), `key_file`
    (a key the sandbox must not let them read) and `canary_port` (a TCP port on 127.0.0.1)."""

    marker: Path
    key_file: Path
    canary_port: int

    def programs(self) -> list:
        """Payload texts, each a function of the task's answer (see payload_worker)."""
        key, port = str(self.key_file), self.canary_port
        return [
            lambda answer: PAYLOADS["file_write"](self.marker),
            lambda answer: payload_expr(f"len(open({key!r}).read()) and {answer}"),
            lambda answer: payload_expr(f"__import__('socket').create_connection(('127.0.0.1',{port}),2) and {answer}"),
        ]


@dataclass
class Campaign:
    coordinator_url: str
    relay_url: str                           # the honest relay (the slowloris' second target)
    tokenizer: Any
    hidden_size: int
    p2p_bootstrap: str = ""                  # the coordinator's libp2p multiaddr ("": no advert flood)
    advert_urls: tuple[str, ...] = ()        # hostile relays only adverts name (HostileRelays.advert_*)
    targets: Targets | None = None
    attacks: tuple[str, ...] = ALL
    flood_n: int = 16
    flood_size: int = 4_000_000
    flood_pause_s: float = 1.0
    slow_n: int = 4
    advert_keys: int = 16
    advert_every_s: float = 20.0
    squat_n: int = 2   # 2 identities hold the new identities' share of a small swarm's bound until their leases expire

    @classmethod
    def against(cls, plan: Any, relays: HostileRelays | None, tokenizer: Any, **kw: Any) -> "Campaign":
        """A campaign against the swarm of `plan` (swarmrl.swarm.SwarmPlan) with `relays`' adverts."""
        adverts = (relays.advert_drip.url, relays.advert_gzip.url) if relays else ()
        return cls(plan.coordinator_url, plan.relay_url, tokenizer, p2p_bootstrap=plan.p2p_bootstrap,
                   advert_urls=adverts, **kw)

    def __post_init__(self) -> None:
        unknown = set(self.attacks) - set(ALL)
        if unknown:
            raise ValueError(f"unknown attacks {sorted(unknown)}; known: {ALL}")
        if "payload" in self.attacks and self.targets is None:
            raise ValueError("the payload attack needs targets")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.flood_answers: Counter = Counter()
        self.flood_waves = 0
        self.slow_lifetimes: dict[str, list[float | None]] = {}
        self.advert_rounds = 0
        self.errors: list[str] = []
        self.payload: EvidenceSpammer | None = None
        self.spam: EvidenceSpammer | None = None
        self.squat: LeaseSquatter | None = None
        self.node: Any = None
        self.started_at = self.stopped_at = 0.0

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> "Campaign":
        self.started_at = time.monotonic()
        url = self.coordinator_url
        coord, relay = urlsplit(url), urlsplit(self.relay_url)
        if "payload" in self.attacks:
            self.payload = payload_worker(url, self.tokenizer, self.targets.programs(), hidden_size=self.hidden_size,
                                          sources=addresses(200, 50)).start()
        if "spam" in self.attacks:
            self.spam = EvidenceSpammer(url, hidden_size=self.hidden_size, sources=addresses(100, 50)).start()
        if "squat" in self.attacks:
            self.squat = LeaseSquatter(url, sources=addresses(150, self.squat_n)).start()
        if "flood" in self.attacks:
            self._thread(self._flood, coord.port)
        if "slowloris" in self.attacks:
            for i, (target, port) in enumerate((("coordinator", coord.port), ("relay", relay.port))):
                for j, phase in enumerate(("headers", "body", "idle")):
                    self._thread(self._slowloris, target, port, phase, addresses(40 + 10 * (3 * i + j), self.slow_n))
        if "adverts" in self.attacks and self.p2p_bootstrap:
            self._thread(self._adverts)
        return self

    def stop(self) -> None:
        self._stop.set()
        for s in (self.payload, self.spam, self.squat):
            if s is not None:
                s.stop()
        for t in self._threads:
            t.join(60)
        if self.node is not None:
            self.node.stop()
        self.stopped_at = time.monotonic()

    def __enter__(self) -> "Campaign":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _thread(self, fn, *args) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - an attacker's own failure is reported, not raised
                with self._lock:
                    self.errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
        t = threading.Thread(target=run, daemon=True, name=f"attack-{fn.__name__}")
        t.start()
        self._threads.append(t)

    # -- attackers ----------------------------------------------------------------------------
    def _flood(self, port: int) -> None:
        while not self._stop.is_set():
            with BigBodies("127.0.0.1", port, "/v1/submissions", n=self.flood_n, size=self.flood_size,
                           sources=addresses(10, self.flood_n), answer_timeout_s=30,
                           run_id=self._run_id()) as flood:
                while not flood.wait(0.5) and not self._stop.is_set():
                    pass
            with self._lock:
                self.flood_answers.update(str(k) for k in flood.statuses().elements())
                self.flood_waves += 1
            self._stop.wait(self.flood_pause_s)

    def _slowloris(self, target: str, port: int, phase: str, sources: list[str]) -> None:
        key = f"{target}/{phase}"
        while not self._stop.is_set():
            with Slowloris("127.0.0.1", port, n=self.slow_n, interval_s=1.0, phase=phase, sources=sources) as lor:
                while lor.open_count() and not self._stop.wait(0.2):
                    pass
            with self._lock:
                self.slow_lifetimes.setdefault(key, []).extend(lor.lifetimes())

    def _adverts(self) -> None:
        from protocol.identity import KeyPair, PublicKey
        from protocol.messages import RunInfo
        from shardcast.p2p import P2PConfig, P2PNode

        info = RunInfo.model_validate_json(httpx.get(self.coordinator_url + "/v1/run", timeout=10).content)
        cfg = P2PConfig(allow_private_addresses=True, bootstrap=[self.p2p_bootstrap], bootstrap_interval_s=0.5)
        self.node = P2PNode(cfg, KeyPair.generate(), info.run_id, PublicKey.from_hex(info.operator_key),
                            PublicKey.from_hex(info.coordinator_key))
        self.node.start()
        boot_peer = self.p2p_bootstrap.rsplit("/", 1)[-1]
        while boot_peer not in self.node.connected_peers():
            if self._stop.wait(0.2):
                return
        self._stop.wait(2.0)  # gossipsub meshes form on the heartbeat
        # one URL per key (receivers keep one unendorsed relay per signer): the hostile relays
        # that only adverts name, and dead ports
        urls = [*self.advert_urls, "http://127.0.0.1:1", "http://127.0.0.1:9"]
        while not self._stop.is_set():
            flood_relay_adverts(self.node, info.run_id, keys=self.advert_keys, url=lambda i: urls[i % len(urls)],
                                urls_per_key=1)
            self.advert_rounds += 1
            self._stop.wait(self.advert_every_s)

    def _run_id(self) -> str:
        if not hasattr(self, "_rid"):
            self._rid = httpx.get(self.coordinator_url + "/v1/run", timeout=10).json()["run_id"]
        return self._rid

    # -- what happened ------------------------------------------------------------------------
    def summary(self) -> dict:
        with self._lock:
            lifetimes = {k: list(v) for k, v in self.slow_lifetimes.items()}
            flood = dict(self.flood_answers)
        return {
            "seconds": (self.stopped_at or time.monotonic()) - self.started_at,
            "payloads": len(self.payload.submitted) if self.payload else 0,
            "spam": len(self.spam.submitted) if self.spam else 0,
            # per try (a fresh identity per policy version): the HTTP status of its submission,
            # 0 where it got no lease to submit on
            "payload_tries": _by_status(self.payload), "spam_tries": _by_status(self.spam),
            "flood_waves": self.flood_waves, "flood_answers": flood,
            "slowloris": {k: {"connections": len(v), "closed_by_server": sum(x is not None for x in v),
                              "longest_s": max((x for x in v if x is not None), default=None)}
                          for k, v in lifetimes.items()},
            "advert_rounds": self.advert_rounds,
            "squat": self.squat.summary() if self.squat else {},
            "errors": list(self.errors) + (self.payload.errors if self.payload else []) + (self.spam.errors if self.spam else []),
        }


def _by_status(spammer: EvidenceSpammer | None) -> dict[str, int]:
    if spammer is None:
        return {}
    return dict(Counter(str(status) for _v, _peer, status in list(spammer.spammed)))


@dataclass(frozen=True)
class Spec:
    """A campaign for another process (picklable): `Campaign`'s fields, the tokenizer by its model folder."""

    coordinator_url: str
    relay_url: str
    model_dir: str
    hidden_size: int
    p2p_bootstrap: str = ""
    advert_urls: tuple[str, ...] = ()
    targets: Targets | None = None
    attacks: tuple[str, ...] = ALL
    squat_n: int = 2


def lower_priority(nice: int, idle: bool = False) -> None:
    """This process, in a session of its own, at `nice` (and so is its session: see
    `swarmrl.procs.session_priority`; without a session of its own the attackers shared one
    scheduling group with the bench process and its /health probe, whose share they then
    took); with `idle`, also in the SCHED_IDLE class (Linux: it runs only on a CPU that
    nothing else wants, and a waking task of any other class preempts it at once)."""
    import os

    from swarmrl.procs import session_priority

    os.setsid()
    session_priority(nice)
    if idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _niced(spec: Spec, conn: Any, nice: int, idle: bool = False) -> None:
    from protocol.lm import load_tokenizer

    lower_priority(nice, idle)
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "model_dir"}
    campaign = Campaign(tokenizer=load_tokenizer(spec.model_dir), **fields).start()
    conn.send("started")
    conn.recv()  # anything (or the parent gone) means stop
    campaign.stop()
    conn.send(campaign.summary())


class NicedCampaign:
    """`spec`'s campaign in a process of its own at `nice` (see the module docstring); leaving
    the `with` block stops it and puts its summary in `.summary`."""

    def __init__(self, spec: Spec, nice: int = 10, timeout_s: float = 120.0, idle: bool = False):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # this process runs threads: never fork it
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_niced, args=(spec, child, nice, idle), daemon=True, name="campaign")
        self.timeout_s = timeout_s
        self.summary: dict = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self) -> "NicedCampaign":
        self._proc.start()
        if not self._conn.poll(self.timeout_s):
            self._proc.kill()
            raise RuntimeError("the campaign process did not start")
        self._conn.recv()
        return self

    def stop(self) -> None:
        self._conn.send("stop")
        if self._conn.poll(self.timeout_s):
            self.summary = self._conn.recv()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    def __enter__(self) -> "NicedCampaign":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _burn(cores: float, nice: int, conn, idle: bool = False) -> None:
    lower_priority(nice, idle)
    period = 0.1
    while not conn.poll(period * (1 - cores)):
        until = time.monotonic() + period * cores
        while time.monotonic() < until:
            pass


class Burner:
    """The control for the attackers' own CPU: a process at the attackers' priority that only
    spins, `cores` of a core at most (a duty cycle per 0.1 s), and attacks nothing. A phase
    with it (`--burn`) shows what that much CPU alone costs the swarm on this machine."""

    def __init__(self, cores: float, nice: int, idle: bool = False):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_burn, args=(min(max(cores, 0.0), 1.0), nice, child, idle), daemon=True)
        self.summary: dict = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self) -> "Burner":
        self._proc.start()
        return self

    def stop(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
