"""Benchmark: the swarm across a simulated internet (issue 22), against what the links allow.

    sudo python bench/wan.py broadcast                  # bound vs relay-only vs peer-assisted
    sudo python bench/wan.py broadcast --size-mb 64 --workers 8 --scale 0.1
    sudo python bench/wan.py rollouts --rtt 100         # the demo recipe: WAN vs loopback

Runs on the namespace harness of tests/wan/ (root, `ip`, TUN, nftables): one namespace per
site, a user-space link emulator (tests.wan.internet: rate, drop-tail buffer, one-way delay,
loss on every access link; netem is not in this kernel), region relays, workers behind home
NATs. See tests/wan/topology.py for the topology (`standard`).

`broadcast`: the lower bound on the time until every worker holds a checkpoint, from link rates
alone (tests.wan.topology.broadcast_bound: the origin's and relays' uplinks, every worker's
downlink; with peers, the workers' uplinks count too), then one shardcast broadcast with relays
only and one with peer shard exchange over libp2p on, SHARDCAST-style side by side: time until
every worker holds the verified version, its ratio to the bound (goal <= 1.25), and first byte
at each worker against its RTT + 0.5 s (goal: within).

`rollouts`: the demo swarm (tests.wan.swarm) on the topology with the given RTT spread and loss,
then the same swarm on loopback; versions per minute, accepted groups per minute and the version
lag at consumption, and the WAN/loopback ratios (goal >= 0.8 at RTT 100 ms).

Rates are scaled (--scale) so a run fits this shared 2-core machine: the emulator is one Python
process that moves every packet, and the roles share the same cores. The emulator reports how
late it delivered packets (a busy machine delays them beyond the model).

Figures (2026-12-06, the shared 2-core machine; also in the README, with the before/after pairs):
  `broadcast --size-mb 16 --workers 12 --nat-workers 3 --shard-mb 1` (rates x0.1, load 3.3-5.4):
  bound 26.8 s (the slowest home downlink, 5 Mbit/s); relays only 28.5 s (1.06x), peer-assisted
  33.1 s (1.23x, one straggler; 0% of bytes from peers); first byte median/worst 0.36/0.58 s and
  0.38/0.55 s, within RTT + 0.5 s at 12/12 workers in both (the same command on the code before
  issue 22's second round, with this round's harness: 1.13x / 1.16x, 0.81/1.33 s, 4/12). Earlier 32 MiB runs: 1.12x, 1.08x.
  `rollouts --rtt-min 100 --rtt-max 100 --loss 0.005 --seconds 60` (3 workers, rates x1):
  accepted groups/min WAN/loopback 969/1192 = 0.81 at load 6-8 (before: 685/883 = 0.78) and
  804/1125 = 0.71 at load 12-13 (before: 611/1023 = 0.60); versions/min 0.90 and 0.71. A third
  run alone at load 9-13 (the emulator 19% late): 528/1113 = 0.47, versions/min 0.24.
  The same command with the worker of 2026-12-06's third round (lease ahead, up to four
  submissions in flight), load 9-15, other swarms on the cores: 872/1365 = 0.64, paired with one
  submission at a time 703/931 = 0.75 (a group reached the coordinator 0.10-0.11 s after its batch
  instead of 0.40-0.75 s, median); RTT 20 ms 612/1075 = 0.57; RTT 300 ms 770/605 (loopback
  starved). Each worker's loop time by phase is printed below the table: idle (no work offered
  by the coordinator's lease sizing) 50-76% on both sides at RTT 20-100 ms. A pair on a quieter
  machine (load 2-8): WAN 1465 groups/min with four in flight vs 999 with one (+47%); loopback
  1313 and 1973 (its load differed), so 1465/1973 = 0.74 against the quiet loopback.
  Waste (issue 23; the run's last line, GET /v1/stats `waste` over the whole run): `rollouts
  --rtt-min 100 --rtt-max 100 --loss 0.005 --seconds 60 --phases wan` with max_staleness 6:
  37 versions/min, lag mean 1.97; of 882 accepted groups none stale, zero advantage 22.8%, left in
  the buffer 6.5% (one run, load 3-8).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python bench/wan.py` puts bench/ first on sys.path, where bench/coordinator.py would shadow
# the coordinator package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

from tests.wan.netns import InNamespace, Net, available, sweep_stale  # noqa: E402
from tests.wan.topology import Topology, broadcast_bound, standard  # noqa: E402

MiB = 1024 * 1024


def topology(a: argparse.Namespace, rtt: tuple[float, float] | None = None) -> Topology:
    topo = standard(workers=a.workers, regions=a.regions, nat_workers=a.nat_workers,
                    rtt_ms=rtt or (a.rtt_min, a.rtt_max), loss=a.loss)
    return topo.scaled(a.scale)


def describe(topo: Topology) -> None:
    op = topo.operator
    print(f"topology: operator {op.up_mbps:.0f} Mbit/s up; regions "
          + ", ".join(f"{r.name} {r.up_mbps:.0f}" for r in topo.regions) + " Mbit/s up; workers "
          + ", ".join(f"{w.name}{'(nat)' if w.behind_nat else ''} {topo.link_of(w.name).down_mbps:.0f}/"
                      f"{topo.link_of(w.name).up_mbps:.0f} Mbit/s {topo.rtt_ms(w.name, 'operator'):.0f} ms"
                      for w in topo.workers)
          + f"; loss {op.loss:.3%}; MTU {topo.mtu}")


# -- broadcast ---------------------------------------------------------------------------------

@contextlib.contextmanager
def run_folder(prefix: str, keep: bool):
    """A scratch folder for one bench run, removed at the end unless --keep (a rollouts run leaves
    ~600 MB of checkpoints and databases; runs left in /tmp once filled this machine's disk)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"run folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def broadcast_runs(a: argparse.Namespace, topo, work: Path, size: int) -> dict:
    """One shardcast broadcast per mode on a fresh namespace build: {peers: (result, emulator stats)}."""
    from tests.wan.broadcast import run_broadcast

    rows = {}
    for peers in ([False, True] if a.mode == "both" else [a.mode == "peers"]):
        with Net(topo, workdir=work / f"net-{int(peers)}", seed=a.seed) as net:
            r = run_broadcast(net, work / f"bc-{int(peers)}", size, peers=peers, shard_mb=a.shard_mb,
                              parallel=a.parallel, timeout_s=a.timeout)
            stats = net.stats()
        rows[peers] = (r, stats)
        print(f"{'peer-assisted' if peers else 'relays only'}: all {len(r.clients)} hold it after "
              f"{r.all_done_s:.2f} s (emulator late max {stats['late_max_s'] * 1000:.0f} ms, "
              f"{stats['late_over_5ms']} of {stats['delivered']} packets > 5 ms late)", flush=True)
    return rows

def cmd_broadcast(a: argparse.Namespace) -> None:
    topo = topology(a)
    size = a.size_mb * MiB
    describe(topo)
    bounds = {peers: broadcast_bound(topo, size, peers=peers) for peers in (False, True)}
    for peers, b in bounds.items():
        terms = ", ".join(f"{k} {v:.2f}" for k, v in sorted(b.terms.items(), key=lambda kv: -kv[1])[:4])
        print(f"bound ({'peers' if peers else 'relays only'}): {b.seconds:.2f} s, set by {b.limit} ({terms} ...)")
    with run_folder("swarmrl-wanbench-", a.keep) as work:
        rows = broadcast_runs(a, topo, work, size)
    print()
    print(f"checkpoint {a.size_mb} MiB, {len(topo.workers)} workers ({a.nat_workers} behind NAT), "
          f"{len(topo.regions)} relays, shards {a.shard_mb} MiB, rates x{a.scale}")
    print("| | bound | all hold it | ratio (goal <= 1.25) | aggregate MiB/s | first byte median / worst "
          "| first byte within RTT + 0.5 s | bytes from peers |")
    print("|---|---|---|---|---|---|---|---|")
    for peers, (r, _) in rows.items():
        b = bounds[peers]
        fb = [c.first_byte_s for c in r.clients]
        within = sum(c.first_byte_s <= c.rtt_ms / 1000 + 0.5 for c in r.clients)
        peer_bytes = sum(c.from_peers_bytes for c in r.clients)
        print(f"| {'peer-assisted' if peers else 'relays only'} | {b.seconds:.2f} s | {r.all_done_s:.2f} s "
              f"| {r.all_done_s / b.seconds:.2f} | {len(r.clients) * size / MiB / r.all_done_s:.1f} "
              f"| {statistics.median(fb):.2f} / {max(fb):.2f} s | {within}/{len(r.clients)} "
              f"| {peer_bytes / (len(r.clients) * size):.0%} |")
    print()
    for peers, (r, _) in rows.items():
        print(("peer-assisted" if peers else "relays only") + " per worker (RTT ms: heard / first byte / done s): "
              + ", ".join(f"{c.name} {c.rtt_ms:.0f}: {c.heard_s:.2f}/{c.first_byte_s:.2f}/{c.done_s:.2f}"
                          for c in r.clients))
    if a.json:
        Path(a.json).write_text(json.dumps({str(k): {"bound": bounds[k].seconds, "done": r.all_done_s,
                                                     "clients": [c.__dict__ for c in r.clients]}
                                            for k, (r, _) in rows.items()}, indent=1))


# -- rollouts ----------------------------------------------------------------------------------
def rollout_settings(a: argparse.Namespace):
    from dataclasses import replace

    from swarmrl.demo import DemoOptions, demo_settings

    return replace(demo_settings(DemoOptions(honest_workers=a.rollout_workers, cheaters=0, seed=a.seed)),
                   eval_every=0)


def demo_model(a: argparse.Namespace) -> Path:
    """The demo's warm-started model, built once into --model-dir (no download)."""
    from swarmrl.modelkit import build_demo_model

    d = Path(a.model_dir)
    if not (d / "config.json").exists():
        print(f"building the demo model into {d} ...", flush=True)
        build_demo_model(d, seed=a.seed)
    return d


def measure(progress, trainer_dir: Path, seconds: float, warm_s: float, alive, phases=None, trainer=None,
            cpu=None) -> dict:
    """Wait until versions come and every worker has work accepted, then count for `seconds`:
    versions/min, accepted groups/min and the version lag of what the versions trained; with
    `phases` (worker -> its /status phase_seconds), where the workers' loops spent that time;
    with `trainer` (its status phase_seconds), where the trainer's did (waiting for data or
    training) and its training seconds per version; with `cpu` (role -> CPU seconds), the cores
    each role used (the link emulator's among them: on one machine it takes cycles that the roles
    of a real deployment would not give up)."""
    from tests.wan.swarm import VersionLag

    deadline = time.monotonic() + warm_s
    while True:
        v, g, n_ok = progress()
        if v >= 1 and n_ok:
            break
        if time.monotonic() > deadline or not alive():
            raise SystemExit("the swarm did not warm up (versions and accepted work from every worker)")
        time.sleep(1.0)
    read = {"worker time": phases, "trainer": trainer, "cpu": cpu}
    with VersionLag(trainer_dir) as lag:
        v0, g0, _ = progress()
        r0 = {k: f() for k, f in read.items() if f}
        t0 = time.monotonic()
        time.sleep(seconds)
        v1, g1, _ = progress()
        r1 = {k: f() for k, f in read.items() if f}
        t1 = time.monotonic()
    lags = lag.between(v0, v1)
    minutes = (t1 - t0) / 60
    out = {"versions/min": (v1 - v0) / minutes, "accepted groups/min": (g1 - g0) / minutes,
           "lag mean": statistics.fmean(lags) if lags else float("nan"),
           "lag max": max(lags) if lags else float("nan"), "versions": v1 - v0}
    if phases:
        out["worker time"] = {name: shares(r0["worker time"].get(name, {}), p1)
                              for name, p1 in r1["worker time"].items()}
    if trainer:
        out["trainer time"] = shares(r0["trainer"], r1["trainer"])
        trained = r1["trainer"].get("training", 0.0) - r0["trainer"].get("training", 0.0)
        out["trainer s/version"] = trained / max(1, v1 - v0)
    if cpu:
        out["cpu cores"] = {k: round((r1["cpu"][k] - r0["cpu"].get(k, 0.0)) / (t1 - t0), 2) for k in r1["cpu"]}
    return out


def shares(before: dict, after: dict) -> dict:
    """The share of a window spent in each phase, from two readings of a phase_seconds dict
    (a worker's /status: generating, leasing, ...; the trainer's: waiting, training, ...)."""
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    total = sum(spent.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}


def trainer_phases(trainer_dir: Path, call):
    """The trainer's status phase_seconds (waiting, training, saving, publishing, ...); `call`
    runs the request where its status port (loopback of its site) is reachable."""
    from trainer.status import STATUS_PATH

    def get(port: int) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{port}{STATUS_PATH}", timeout=10).json().get("phase_seconds", {})

    def read() -> dict:
        try:
            return call(get, int((trainer_dir / "trainer.port").read_text()))
        except Exception as exc:  # noqa: BLE001 (a trainer that does not answer is left out)
            print(f"(trainer: no status: {exc})", flush=True)
            return {}
    return read


def role_cpu(group, plan, extra: dict[str, int] | None = None):
    """role -> CPU seconds so far (with descendants): the trainer, the workers, every other role
    of the swarm together, and `extra` processes by name (the link emulator)."""
    from tests.hostile.watch import tree_cpu

    def read() -> dict:
        named = {"trainer": ["trainer"], "workers": list(plan.worker_names)}
        taken = {n for ns in named.values() for n in ns}
        pids = {role: [group.get(n).popen.pid for n in ns] for role, ns in named.items()}
        pids["other roles"] = [c.popen.pid for c in group.children if c.name not in taken]
        pids.update({name: [pid] for name, pid in (extra or {}).items()})
        return {role: tree_cpu(ps) for role, ps in pids.items()}
    return read


def worker_phases(plan, call):
    """worker name -> its /status phase_seconds; `call` runs the request where the worker's
    status port is reachable (its namespace, on the simulated internet)."""
    from protocol.config import load_config
    from worker.config import WorkerConfig
    from worker.main import fetch_status

    cfgs = {name: load_config(WorkerConfig, plan.configs[name]) for name in plan.worker_names}

    def read() -> dict:
        out = {}
        for name, cfg in cfgs.items():
            try:
                out[name] = call(name, fetch_status, cfg).get("phase_seconds", {})
            except Exception as exc:  # a worker that does not answer is left out of the breakdown
                print(f"({name}: no status: {exc})", flush=True)
        return out
    return read


def swarm_progress(stats, n_workers: int):
    def progress() -> tuple[int, int, bool]:
        st = stats()
        version = (st.get("policy") or {}).get("current_version") or 0
        workers = st.get("workers", [])
        accepted = [w.get("accepted", 0) for w in workers]
        return version, sum(accepted), len(workers) >= n_workers and all(x > 0 for x in accepted)
    return progress


def rollouts_wan(a: argparse.Namespace, model: Path, topo: Topology, work: Path) -> dict:
    from swarmrl.procs import ProcessGroup
    from tests.wan.swarm import plan_wan_swarm

    with Net(topo, workdir=work / "net", seed=a.seed) as net:
        wan = plan_wan_swarm(net, work / "run", model, rollout_settings(a))
        try:
            with ProcessGroup(wan.plan.logs) as group:
                wan.start(group)
                sites = {name: InNamespace(net, wan.site_of[name]) for name in (*wan.plan.worker_names, "trainer")}
                trainer_dir = wan.plan.root / "trainer"
                try:
                    out = measure(swarm_progress(wan.stats, a.rollout_workers), trainer_dir,
                                  a.seconds, a.warm, lambda: all(c.alive for c in group.children),
                                  worker_phases(wan.plan, lambda name, fn, *args: sites[name].call(fn, *args)),
                                  trainer_phases(trainer_dir, sites["trainer"].call),
                                  role_cpu(group, wan.plan, {"link emulator": net.emulator.pid}))
                    out["waste"] = wan.stats().get("waste") or {}  # issue 23: accepted groups never trained, by cause
                finally:
                    for site in sites.values():
                        site.close()
            st = net.stats()
            out["emulator late > 5 ms"] = st["late_over_5ms"] / max(1, st["delivered"])
            return out
        finally:
            wan.close()


def rollouts_loopback(a: argparse.Namespace, model: Path, work: Path) -> dict:
    import httpx

    from swarmrl.procs import ProcessGroup
    from swarmrl.swarm import plan_swarm, start_swarm

    plan = plan_swarm(work / "loopback", model, rollout_settings(a))

    def stats() -> dict:
        try:
            r = httpx.get(plan.coordinator_url + "/v1/stats", timeout=10)
            return r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}

    with ProcessGroup(plan.logs) as group:
        start_swarm(plan, group)
        trainer_dir = plan.root / "trainer"
        out = measure(swarm_progress(stats, a.rollout_workers), trainer_dir, a.seconds, a.warm,
                      lambda: all(c.alive for c in group.children),
                      worker_phases(plan, lambda name, fn, *args: fn(*args)),
                      trainer_phases(trainer_dir, lambda fn, *args: fn(*args)), role_cpu(group, plan))
        out["waste"] = stats().get("waste") or {}
        return out


def cmd_rollouts(a: argparse.Namespace) -> None:
    topo = standard(workers=a.rollout_workers, regions=a.regions, nat_workers=min(a.nat_workers, a.rollout_workers),
                    rtt_ms=(a.rtt_min, a.rtt_max), loss=a.loss).scaled(a.scale)
    describe(topo)
    model = demo_model(a)
    phases = a.phases.split(",")
    runs: dict[str, list[dict]] = {p: [] for p in phases}
    with run_folder("swarmrl-wanroll-", a.keep) as work:
        for k in range(a.rounds):
            # every other round in the other order, so a machine that slows down (or speeds up)
            # over the run does not favour the phase that always comes first
            for phase in phases if k % 2 == 0 else phases[::-1]:
                t = time.monotonic()
                where = work / f"{phase}{k}"
                r = rollouts_wan(a, model, topo, where) if phase == "wan" else rollouts_loopback(a, model, where)
                runs[phase].append(r)
                print(f"round {k + 1} {phase}: {r} ({time.monotonic() - t:.0f} s)", flush=True)
    rows = {p: {key: statistics.median(r[key] for r in rs) for key in KEYS} for p, rs in runs.items()}
    both = len(rows) == 2 and "wan" in rows and "loopback" in rows
    print()
    print(f"the demo recipe, {a.rollout_workers} workers, {a.seconds:.0f} s measured per phase after warm-up"
          f"{f', medians of {a.rounds} rounds' if a.rounds > 1 else ''}; RTT to the operator {a.rtt_min:.0f}-"
          f"{a.rtt_max:.0f} ms, loss {a.loss:.2%}, rates x{a.scale}")
    print("| | " + " | ".join(rows) + (" | WAN / loopback (goal >= 0.8) |" if both else " |"))
    print("|---|" + "---|" * (len(rows) + both))
    for key in KEYS:
        ratio = ""
        if both:
            ratio = " |" if "lag" in key or not rows["loopback"][key] else \
                f" {rows['wan'][key] / rows['loopback'][key]:.2f} |"
        print(f"| {key} | " + " | ".join(f"{r[key]:.2f}" for r in rows.values()) + " |" + ratio)
    if both and a.rounds > 1:
        for key in KEYS[:2]:
            print(f"{key} WAN / loopback by round: " + ", ".join(
                f"{w[key] / lo[key]:.2f}" for w, lo in zip(runs["wan"], runs["loopback"]) if lo[key]))
    from coordinator.rules.waste import summary_line

    for phase, rs in runs.items():
        for k, r in enumerate(rs):
            tag = f"{phase}{f' round {k + 1}' if len(rs) > 1 else ''}"
            for name, spent in r["worker time"].items():
                print(f"{tag} {name} loop time: " + ", ".join(f"{p} {v:.0%}" for p, v in spent.items()))
            print(f"{tag} trainer time: " + ", ".join(f"{p} {v:.0%}" for p, v in r.get("trainer time", {}).items())
                  + f"; {r.get('trainer s/version', float('nan')):.3f} s training per version")
            print(f"{tag} CPU cores: " + ", ".join(f"{p} {v:.2f}" for p, v in r.get("cpu cores", {}).items()))
            print(f"{tag}, the whole run: {summary_line(r['waste'])}")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))


KEYS = ("versions/min", "accepted groups/min", "lag mean", "lag max")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("broadcast", "rollouts"):
        s = sub.add_parser(name)
        s.add_argument("--workers", type=int, default=8)
        s.add_argument("--regions", type=int, default=2)
        s.add_argument("--nat-workers", type=int, default=2)
        s.add_argument("--rtt-min", type=float, default=20)
        s.add_argument("--rtt-max", type=float, default=300)
        s.add_argument("--loss", type=float, default=0.0)
        s.add_argument("--scale", type=float, default=0.1 if name == "broadcast" else 1.0,
                       help="every link rate times this (broadcast: default 0.1, origin 100 Mbit/s, relays 40, "
                       "workers 5-20 down, with a checkpoint scaled down alike; rollouts: default 1, the issue's "
                       "rates, for the demo model's real 3 MB checkpoints)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--json", default="")
        s.add_argument("--keep", action="store_true", help="keep the run folder (logs, databases) and print "
                       "where; by default it is removed at the end")
    b = sub.choices["broadcast"]
    b.add_argument("--size-mb", type=int, default=32)
    b.add_argument("--shard-mb", type=int, default=4)
    b.add_argument("--parallel", type=int, default=4)
    b.add_argument("--mode", choices=["both", "relays", "peers"], default="both")
    b.add_argument("--timeout", type=float, default=600)
    r = sub.choices["rollouts"]
    r.add_argument("--rollout-workers", type=int, default=3)
    r.add_argument("--seconds", type=float, default=120)
    r.add_argument("--warm", type=float, default=300, help="seconds allowed for the swarm to warm up")
    r.add_argument("--phases", default="wan,loopback")
    r.add_argument("--rounds", type=int, default=1, help="phases per round, every other round in the other "
                   "order; the table shows medians and the ratio per round")
    r.add_argument("--model-dir", default="/tmp/swarmrl-wan-model")
    a = p.parse_args()
    ok, why = available()
    if not ok:
        raise SystemExit(f"cannot build the simulated internet here: {why}")
    sweep_stale()
    {"broadcast": cmd_broadcast, "rollouts": cmd_rollouts}[a.cmd](a)


if __name__ == "__main__":
    main()
