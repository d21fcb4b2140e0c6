"""The operator's dashboard: a live web page and read-only JSON, served by the coordinator.

    GET /dashboard/                      the page (static HTML/JS/CSS shipped in this package; no CDN)
    GET /dashboard/rollout.html?id=S     one rollout's audit view
    GET /v1/dashboard/overview           run, versions, buffer depth, verification queue
    GET /v1/dashboard/workers            status, throughput, check rate, verdicts per worker
    GET /v1/dashboard/versions           policy versions and their broadcast progress to relays
    GET /v1/dashboard/curve              mean reward and held-out accuracy by version
    GET /v1/dashboard/rejections         recent rejections with reasons and audit links
    GET /v1/dashboard/rollouts/{id}      decoded prompt, completions, rewards, every check
    POST /v1/trainer/eval                the trainer's signed held-out evaluation of a version

Every GET answers the public view unless the request carries the operator token
(`Authorization: Bearer`, `dashboard.operator_token_file`): no contributor addresses, no
undecided submission, of a verdict only the outcome and the failed checks' names
(`coordinator.privacy`). The page asks for the token (or takes it from `#token=...`).

Modules: `routes` (thin FastAPI adapters, mounted by `coordinator.app` with one call),
`views` (what each endpoint answers), `queries` (read-only SQL), `relays` (polling the
advertised relays), `static/` (the page). Everything here reads the coordinator's state;
the only write is an eval report (a `meta` row), which changes nothing else.
"""

from coordinator.dashboard.routes import mount_dashboard

__all__ = ["mount_dashboard"]
