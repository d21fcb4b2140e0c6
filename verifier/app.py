"""The verifier's small HTTP face: GET /health (JSON status), GET /metrics (Prometheus), /docs.

Collaborators: `verifier.main` serves it in a background thread (`protocol.http.ServerThread`)
while the main thread runs the work loop; it only reads `VerifierService.status()`. It is
served behind `protocol.guard.read_only` (connection caps per address, header and body
deadlines, no request body), so a scraper-facing port cannot be held open or flooded with
bodies.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol.guard import ServerLimits, attach, read_only
from protocol.routes import HEALTH, METRICS
from verifier.metrics import VerifierMetrics


def create_app(status: Callable[[], dict], metrics: VerifierMetrics, identity: dict,
               limits: ServerLimits = ServerLimits()) -> FastAPI:
    app = FastAPI(title="swarmrl verifier", version="1",
                  description="Checks rollouts of untrusted workers and posts signed verdicts.")

    @app.get(HEALTH)
    def health() -> dict:
        """Liveness and what the verifier has done so far."""
        return {"status": "ok", **identity, **status()}

    @app.get(METRICS)
    def prometheus() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return attach(app, read_only(limits))
