"""What the hostile-swarm test and the benches watch from outside the processes under attack.

Nothing here attacks: these are the instruments, read from places any operator can read
(/proc, GET /health, GET /metrics), so the numbers mean the same in a test and in a bench.

    with RssSampler({"coordinator": pid, ...}, every_s=0.5) as rss:   # /proc/<pid>/status VmRSS
        ...
    rss.peak("coordinator"), rss.peak("coordinator", tree=True)       # bytes (tree: with its children)
    rss.series("coordinator")                                         # [(monotonic s, bytes)]
    cpu_seconds(pid)                                                  # user + system, from /proc

    with HealthProbe(port, every=0.05) as probe:                      # GET /health, one keep-alive
        ...
    probe.latencies, probe.errors                                     # ms of each answer, failures

    before = histogram(metrics_text, "swarmrl_coordinator_request_seconds", route="submit")
    ...                                                               # later, after = the same
    quantile(delta(after, before), 0.99)                              # seconds (interpolated in a bucket)

`RssSampler` also follows each process's children (the coordinator's verify process and
scorer sandbox): `tree=True` sums a process and every descendant at each sample.
Stop: leaving the `with` block ends the sampling thread; nothing is left running.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` now (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (all its threads; 0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, ValueError, IndexError):
        return 0.0


def children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, for every process visible in /proc now."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command may hold spaces and ')'
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of `pids` and their living descendants (a service's sandbox pool and verify
    processes; a role started through `ip netns exec`)."""
    kids = children_map()
    return sum(cpu_seconds(p) for pid in pids for p in descendants(pid, kids))


class RssSampler:
    """Samples the RSS of named processes (alone and with their descendants) every `every_s`."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.5):
        self.pids = dict(pids)
        self.every_s = every_s
        self._own: dict[str, list[tuple[float, int]]] = {n: [] for n in self.pids}
        self._tree: dict[str, list[tuple[float, int]]] = {n: [] for n in self.pids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def sample(self) -> None:
        kids = children_map()
        now = time.monotonic()
        with self._lock:
            for name, pid in self.pids.items():
                self._own[name].append((now, rss_bytes(pid)))
                self._tree[name].append((now, sum(rss_bytes(p) for p in descendants(pid, kids))))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def series(self, name: str, tree: bool = False, since: float = 0.0,
               until: float = float("inf")) -> list[tuple[float, int]]:
        with self._lock:
            return [(t, b) for t, b in (self._tree if tree else self._own)[name] if since <= t <= until]

    def peak(self, name: str, tree: bool = False, since: float = 0.0, until: float = float("inf")) -> int:
        return max((b for _, b in self.series(name, tree, since, until)), default=0)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _probe(host: str, port: int, every: float, conn) -> None:
    """HealthProbe's process: GET /health every `every` s until told to stop, then send
    (latencies, errors) back."""
    import httpx

    latencies: list[float] = []
    errors = 0
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=60) as http:
        conn.send("ready")
        while not conn.poll(0):
            t0 = time.perf_counter()
            try:
                ok = http.get("/health").status_code == 200
            except Exception:  # noqa: BLE001 - any failure to answer is what we count
                ok = False
            dt = (time.perf_counter() - t0) * 1000
            if ok:
                latencies.append(dt)
            else:
                errors += 1
            conn.poll(max(0.0, every - dt / 1000))
    conn.send((latencies, errors))


class HealthProbe:
    """GET /health every `every` s on one keep-alive connection; latencies in ms, errors counted.

    It runs in a process of its own: as a thread of the caller it measured the caller's own
    GIL too, and bench/hostile.py's caller also serves the hostile relays (hundreds of gzip and
    drip answers a minute), which showed as /health latency the coordinator never had."""

    def __init__(self, port: int, every: float, host: str = "127.0.0.1"):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_probe, args=(host, port, every, child), daemon=True,
                                 name="health-probe")
        self.latencies: list[float] = []
        self.errors = 0

    def __enter__(self) -> "HealthProbe":
        self._proc.start()
        try:
            ready = self._conn.poll(60) and self._conn.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self._proc.kill()
            raise RuntimeError("the health probe's process did not start")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._conn.send("stop")
            if self._conn.poll(70):
                self.latencies, self.errors = self._conn.recv()
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()


def summary(lat: list[float]) -> tuple[str, str, str]:
    """(p50, p99, max) of latencies, formatted with one decimal ('-' when there are none)."""
    if not lat:
        return "-", "-", "-"
    s = sorted(lat)
    return f"{statistics.median(s):.1f}", f"{percentile(s, 0.99):.1f}", f"{s[-1]:.1f}"


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` quantile of `values` (nan when empty)."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


_BUCKET = re.compile(r'^(?P<name>\w+)_bucket\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')


def histogram(metrics_text: str, name: str, **labels: str) -> list[tuple[float, float]]:
    """The cumulative buckets [(le, count), ...] of Prometheus histogram `name` whose labels
    include `labels`, summed over the other labels, in increasing `le` (+Inf last)."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    out: dict[float, float] = {}
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if not m or m["name"] != name:
            continue
        parts = set(m["labels"].split(","))
        if not want <= parts:
            continue
        le = next(p.split("=", 1)[1].strip('"') for p in parts if p.startswith("le="))
        bound = float("inf") if le == "+Inf" else float(le)
        out[bound] = out.get(bound, 0.0) + float(m["value"])
    return sorted(out.items())


def delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The buckets of what was observed between two scrapes of one histogram."""
    old = dict(before)
    return [(le, n - old.get(le, 0.0)) for le, n in after]


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """`q` quantile of cumulative buckets, linear within the bucket (Prometheus'
    histogram_quantile): an estimate no finer than the buckets; nan without observations;
    the largest finite bound when it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lower_le
            return lower_le + (le - lower_le) * ((rank - lower_n) / (n - lower_n) if n > lower_n else 1.0)
        lower_le, lower_n = le, n
    return lower_le
