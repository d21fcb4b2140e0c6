"""Prometheus metrics of the coordinator (its own registry, served at GET /metrics).

Counters and histograms are updated by the routes and the service as events happen; the
state gauges (workers, leases and submissions by status, buffer depth, policy versions) are
read from the database at scrape time by `StateCollector`, so they are right after a restart
and across replicas sharing one database.

With several server processes (`workers > 1`), prometheus_client's multiprocess mode adds up
the counters of all processes at scrape time: `coordinator.main` sets PROMETHEUS_MULTIPROC_DIR
before prometheus_client is imported, and `Metrics(multiprocess_dir=...)` exposes the sum.

Experiment tracking (`protocol.tracking`, config `tracking`): `tracking_snapshot` turns the same
registry (counters: verdicts, rejections by reason, bans, leases, groups; state gauges) and the
accepted reward of the current version into one flat dict of scalars, which the app's
`_track_loop` logs every `tracking.every_s` seconds with the policy version as the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "swarmrl_coordinator"
# Request latency buckets: 1, 1.5, 2, 3, 5, 7 per decade from 1 ms to 10 s, so a quantile read
# from them (linear within a bucket, as Prometheus' histogram_quantile) is off by less than the
# bucket's width (each bound at most 1.67x the one before). With 0.05, 0.1, 0.25 (before), a submission p99
# that crossed 100 ms read as 96-98 ms just below it and 184-229 ms just above (bench/hostile.py).
LATENCY_BUCKETS = (0.001, 0.0015, 0.002, 0.003, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.07,
                   0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r: CollectorRegistry | None = self.registry
        if multiprocess_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, path=multiprocess_dir)
            r = None  # values live in the shared files; the collector above exposes their sum
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "time to answer a request, by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.gate_wait = Histogram(f"{PREFIX}_swarm_gate_wait_seconds", "time a swarm request waited for a place "
                                   "at the gate (coordinator.gate)", buckets=LATENCY_BUCKETS, registry=r)
        # the submit route's latency by intake lane (coordinator.fairpool): `established` is what
        # workers with verified work wait, whatever fresh identities send (bench/hostile.py)
        self.submission_latency = Histogram(f"{PREFIX}_submission_seconds", "time to answer a signed submission, by "
                                            "intake lane (established: workers with verified work accepted; new: "
                                            "the rest)", ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter(f"{PREFIX}_rejections", "refused requests by reason", ["reason"], registry=r)
        self.submissions = Counter(f"{PREFIX}_submissions_received", "submissions that passed intake", registry=r)
        # no full_check label: /metrics is public, and a worker watching it right after its own
        # verdict would learn whether that submission was fully checked
        self.verdicts = Counter(f"{PREFIX}_verdicts", "verdicts recorded (accepted, rejected, or disputed: a rejection not counted against the worker)", ["verdict"], registry=r)
        self.leases = Counter(f"{PREFIX}_leases_issued", "leases issued", registry=r)
        self.tasks_skipped = Counter(f"{PREFIX}_tasks_skipped", "tasks that cannot be leased (a prompt that is "
                                     "empty or too long for the context, task data over MAX_TASK_DATA_BYTES, a "
                                     "source error), skipped by the lease draw; each counted once (the log names it)",
                                     registry=r)
        self.leases_returned = Counter(f"{PREFIX}_leases_returned", "leases that came back unfinished",
                                       ["why"], registry=r)
        self.groups_served = Counter(f"{PREFIX}_groups_served", "groups handed to the trainer (again after a lost "
                                     "acknowledgement)", registry=r)
        self.groups_acked = Counter(f"{PREFIX}_groups_acked", "groups the trainer acknowledged (consumed)", registry=r)
        self.dropped_stale = Counter(f"{PREFIX}_groups_dropped_stale", "accepted groups that fell out of the async window",
                                     registry=r)
        self.unjudged = Counter(f"{PREFIX}_submissions_unjudged", "queued submissions dropped without a verdict: "
                                "after verification_max_claims claims (no verifier could judge them), or because "
                                "their task data cannot be sent to a verifier", registry=r)
        self.groups_unused = Counter(f"{PREFIX}_groups_unused", "accepted groups that will never reach a training "
                                     "step, by cause (stale, stale_held; the trainer's zero_advantage, pass_rate, "
                                     "trainer_stale; bans: GET /v1/stats `waste`)", ["cause"], registry=r)
        self.bans = Counter(f"{PREFIX}_bans", "workers banned", registry=r)
        self.archived = Counter(f"{PREFIX}_archived_rows", "rows written to the Parquet archive", ["table"], registry=r)
        self.archive_over_budget = Counter(f"{PREFIX}_archive_evidence_over_budget",
                                           "versions claimed by rejected submissions that the checkpoint archive "
                                           "does not keep (over checkpoints.rejected_max_versions/_bytes)", registry=r)

    def attach_state(self, read_state: Callable[[], dict]) -> None:
        self.registry.register(StateCollector(read_state))


class StateCollector(Collector):
    """Gauges computed from the database when Prometheus scrapes."""

    def __init__(self, read_state: Callable[[], dict]):
        self.read_state = read_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.read_state()
        for name, doc, key in (("workers", "workers by status", "workers"),
                               ("leases", "leases by status", "leases"),
                               ("submissions", "submissions by status", "submissions")):
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["status"])
            for status, n in sorted(s.get(key, {}).items()):
                g.add_metric([status], n)
            yield g
        yield GaugeMetricFamily(f"{PREFIX}_buffer_depth", "accepted groups waiting for the trainer (ready and held for a full check together)",
                                value=s.get("buffer_depth", 0))
        yield GaugeMetricFamily(f"{PREFIX}_policy_version", "current policy version (-1 before the first)",
                                value=-1 if s.get("current_version") is None else s["current_version"])
        yield GaugeMetricFamily(f"{PREFIX}_policy_versions", "policy versions announced", value=s.get("versions", 0))
        yield GaugeMetricFamily(f"{PREFIX}_tasks_returned", "tasks waiting to be leased again",
                                value=s.get("tasks_returned", 0))


def tracking_snapshot(registry: CollectorRegistry, accepted_reward: dict[int, float]) -> tuple[dict[str, float], int]:
    """(scalars named "coordinator/<metric>[/<label values>]", the current policy version):
    every counter total and gauge of `registry`, plus the mean reward of accepted submissions
    of the current version (histograms are left out: Prometheus has them)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.type not in ("counter", "gauge"):
            continue
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_total"):
                continue  # the _created timestamps
            name = sample.name.removeprefix(PREFIX + "_").removesuffix("_total")
            labels = "/".join(str(v) for _, v in sorted(sample.labels.items()))
            out["coordinator/" + name + (f"/{labels}" if labels else "")] = float(sample.value)
    version = int(out.get("coordinator/policy_version", -1))
    if version in accepted_reward:
        out["coordinator/accepted_reward"] = accepted_reward[version]
    return out, max(version, 0)
