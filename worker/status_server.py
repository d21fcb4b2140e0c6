"""The worker's local HTTP endpoint: `/status`, `/health`, `/metrics`, `/docs`.

Served from a background thread of the daemon on `status_host:status_port` (loopback by
default; port 0 picks a free port, written to `data_dir/status.port` so that
`swarmrl worker status` and tests find it). Read-only: it reports `WorkerState.snapshot()`
and never changes the daemon. Metrics are computed from the same snapshot at scrape time by
a collector on the app's own registry, so there is one source of truth. Served behind
`protocol.guard.read_only` (connection caps, header and body deadlines, no request body), in
case `status_host` opens it beyond loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from protocol.guard import ServerLimits, attach, read_only
from protocol.http import ServerThread, write_port_file
from worker.state import WorkerState

PORT_FILE = "status.port"

_COUNTERS = {
    "tokens_generated": "completion tokens generated this session",
    "submitted": "submissions acknowledged by the coordinator this session",
    "accepted": "submissions accepted by a verifier this session",
    "rejected": "submissions rejected (by the coordinator or a verifier) this session",
    "dropped": "submissions dropped without a verdict this session",
    "credits_tokens": "accepted completion tokens (credit) this session",
}
_GAUGES = {
    "tokens_per_s": "recent generation rate (tokens per second)",
    "leases_active": "leases held now",
    "spool_pending": "finished submissions not yet acknowledged",
    "spool_awaiting": "acknowledged submissions waiting for a verdict",
    "batch_sequences": "sequences decoded per batch",
}


class _SnapshotCollector:
    def __init__(self, state: WorkerState):
        self.state = state

    def collect(self) -> Iterator:
        s = self.state.snapshot()
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"swarmrl_worker_{name}", doc, value=s[name])
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"swarmrl_worker_{name}", doc, value=s[name])
        yield GaugeMetricFamily("swarmrl_worker_policy_version", "policy version loaded (-1: none)",
                                value=-1 if s["policy_version"] is None else s["policy_version"])
        yield GaugeMetricFamily("swarmrl_worker_coordinator_up", "1 if the coordinator answered last time",
                                value=1.0 if s["coordinator_up"] else 0.0)


def make_app(state: WorkerState, limits: ServerLimits = ServerLimits()) -> FastAPI:
    app = FastAPI(title="swarmrl worker", description="Local status of a swarmrl worker daemon (read-only).")
    registry = CollectorRegistry()
    registry.register(_SnapshotCollector(state))

    @app.get("/status")
    def status() -> dict:
        """Everything `swarmrl worker status` prints."""
        return state.snapshot()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "phase": state.get("phase")}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return attach(app, read_only(limits))


def start_status_server(state: WorkerState, host: str, port: int, data_dir: Path) -> ServerThread:
    server = ServerThread(make_app(state), host=host, port=port).start()
    write_port_file(Path(data_dir) / PORT_FILE, server.port)
    return server
