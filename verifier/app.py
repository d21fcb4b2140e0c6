"""The verifier's small HTTP face: GET /health (JSON status), GET /metrics (Prometheus), /docs.

Collaborators: `verifier.main` serves it in a background thread (`protocol.http.ServerThread`)
while the main thread runs the work loop; it only reads `VerifierService.status()`.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol.routes import HEALTH, METRICS
from verifier.metrics import VerifierMetrics


def create_app(status: Callable[[], dict], metrics: VerifierMetrics, identity: dict) -> FastAPI:
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

    return app
