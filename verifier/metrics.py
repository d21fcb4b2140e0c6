"""Prometheus metrics of the verifier (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "swarmrl_verifier"


class VerifierMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs = Counter(f"{PREFIX}_jobs", "jobs claimed", ["full_check"], registry=r)
        self.verdicts = Counter(f"{PREFIX}_verdicts", "verdicts posted", ["outcome"], registry=r)
        self.check_failures = Counter(f"{PREFIX}_check_failures", "failed checks", ["check"], registry=r)
        self.prefill_seconds = Histogram(f"{PREFIX}_prefill_seconds", "prefill time per submission",
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                         registry=r)
        self.job_seconds = Histogram(f"{PREFIX}_job_seconds", "time to judge one submission",
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                     registry=r)
        self.model_loads = Counter(f"{PREFIX}_model_loads", "policy versions loaded", registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "problems by kind", ["kind"], registry=r)
        self.newest_version = Gauge(f"{PREFIX}_newest_policy_version", "newest version on disk", registry=r)
