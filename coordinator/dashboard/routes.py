"""The dashboard's HTTP surface: read-only JSON under /v1/dashboard, the page under /dashboard,
and the trainer's signed evaluation reports (POST /v1/trainer/eval).

Thin adapters: each GET goes through the coordinator's own request plumbing (`Api.viewed`:
the operator token or the anonymous view, request metrics, errors as `{"detail": ...}`),
calls one function of `coordinator.dashboard.views` and gives anonymous readers the public
form of its answer (`coordinator.privacy`); the POST goes through `Api.signed` (size limit, envelope,
operator key, clock skew) and `record_eval`, which also spends the nonce, so a replayed
report is refused. Answers are reused for `dashboard_cache_s` (`Recent`), so open dashboards
cost the database little. Response models are declared for /docs only. In the process that runs
the coordinator's background work, the router's lifespan also runs the checkpoint archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from coordinator import privacy
from coordinator.context import Context
from coordinator.dashboard import queries, views
from coordinator.dashboard.relays import RelayPoller
from coordinator.errors import NotFound
from coordinator.service import use_nonce
from protocol import routes
from protocol.envelope import Envelope, Opened
from protocol.messages import KIND_EVAL_REPORT, EvalReport

if TYPE_CHECKING:
    from coordinator.api import Api

STATIC = Path(__file__).resolve().parent / "static"
API = routes.DASHBOARD_API


# -- response models (documentation) -----------------------------------------------------------
class Overview(BaseModel):
    run_id: str
    time: float
    current_version: int | None
    versions: int
    async_window: int
    workers: dict[str, int]
    leases: dict[str, int]
    submissions: dict[str, int]
    verification_queue: int
    buffer: dict[str, int]
    waste: dict[str, Any] = {}  # coordinator.rules.waste.report: accepted groups never trained, by cause
    tasks_returned: int
    relays: list[str]
    archive: dict[str, Any]


class WorkerRow(BaseModel):
    worker_id: str
    status: str
    tokens_per_s: float
    reported_tokens_per_s: float
    check_rate: float
    accepted: int
    rejected: int
    queued: int
    dropped: int
    full_checked: int
    accepted_tokens: int
    active_leases: int
    policy_version: int | None
    last_seen_s_ago: float
    ban_reason: str


class VersionsView(BaseModel):
    versions: list[dict[str, Any]]
    relays: list[dict[str, Any]]


class CurvePoint(BaseModel):
    version: int
    submissions: int
    accepted: int
    mean_reward: float | None
    mean_reward_accepted: float | None
    greedy_accuracy: float | None
    sampled_accuracy: float | None
    eval_tasks: int | None


class Rejection(BaseModel):
    submission_id: str
    worker_id: str
    policy_version: int
    decided_at: float | None
    reason: str
    failed_checks: list[str]
    audit_url: str
    audit_command: str


# -- the trainer's evaluation reports ------------------------------------------------------------
def record_eval(ctx: Context, opened: Opened[EvalReport]) -> dict:
    """Store the held-out evaluation of one announced version (the newest report wins)."""
    r = opened.body
    now = ctx.clock()
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        if not queries.version_exists(conn, r.policy_version):
            raise NotFound("unknown_version", f"policy version {r.policy_version} was never announced; "
                                              "announce it (POST /v1/policy) before reporting its evaluation")
        queries.put_eval(conn, r.policy_version, r.model_dump() | {"reported_at": now})
    return {"ok": True}


def _keeper_lifespan(ctx: Context):
    """Run the checkpoint archive (`coordinator.checkpoints`) for as long as the app runs."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        from coordinator.checkpoints import start_checkpoint_archive

        keeper = await asyncio.to_thread(start_checkpoint_archive, ctx)
        try:
            yield
        finally:
            if keeper is not None:
                await asyncio.to_thread(keeper.stop)

    return lifespan


class Recent:
    """Answers reused for `ttl_s` (wall clock): any number of open dashboards, refreshing every two
    seconds, cost the database one query per endpoint per `ttl_s`.

    With `busy_share`, an answer is reused only as long as it took to compute times
    (1 / busy_share - 1), up to `ttl_s`: pollers can then hold the server busy with this answer
    at most that share of the time, and a cheap answer (a small database) stays fresh."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, size: int = 64,
                 busy_share: float | None = None):
        self.ttl_s, self.clock, self.size, self.busy_share = ttl_s, clock, size, busy_share
        self._hits: dict[Any, tuple[float, float, Any]] = {}  # key -> (computed at, reuse for, value)

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        if self.ttl_s <= 0:
            return compute()
        now = self.clock()
        hit = self._hits.get(key)
        if hit is not None and now - hit[0] < hit[1]:
            return hit[2]
        value = compute()
        done = self.clock()
        reuse = self.ttl_s if self.busy_share is None else \
            min(self.ttl_s, (done - now) * (1.0 / self.busy_share - 1.0))
        self._hits[key] = (done, reuse, value)
        if len(self._hits) > self.size:
            self._hits.pop(min(self._hits, key=lambda k: self._hits[k][0]))
        return value


def _computed_for(limit: int, default: int, most: int) -> int:
    """The `limit` an answer is computed (and cached) for: the endpoint's default or its most;
    every other limit is a slice of one of them. Keyed by the asked limit, a reader cycling
    limit=51, 52, ... made every request a cache miss (a full aggregation over the submissions
    per anonymous request, and the cache evicted for everyone)."""
    return default if limit <= default else most


def mount_dashboard(app: FastAPI, ctx: Context, api: "Api", *, background: bool = True) -> None:
    """Add the dashboard routes, the static page and the eval-report route to `app`; with
    `background` (the process that runs the coordinator's periodic work), also the checkpoint
    archive that keeps what re-verification needs."""
    poller = RelayPoller(list(ctx.cfg.relays), min_interval_s=ctx.cfg.dashboard_relay_poll_s, clock=ctx.clock)
    r = APIRouter(tags=["dashboard"], lifespan=_keeper_lifespan(ctx) if background else None)
    recent = Recent(ctx.cfg.dashboard_cache_s)

    @r.get(API + "/overview", response_model=Overview)
    async def overview(request: Request) -> Response:
        """Run, versions, buffer depth, verification queue, counts by status."""
        return await api.viewed(request, "dash_overview", lambda full: privacy.overview(
            recent.get("overview", lambda: views.overview(ctx)), full))

    @r.get(API + "/workers", response_model=list[WorkerRow])
    async def workers(request: Request) -> Response:
        """Every worker: status, throughput (completion tokens/s over the last minute, and as reported),
        check rate, verdicts, active leases (addresses and full-check counts with the operator token)."""
        return await api.viewed(request, "dash_workers", lambda full: [
            privacy.worker_row(w, full) for w in recent.get("workers", lambda: views.worker_rows(ctx))])

    @r.get(API + "/versions", response_model=VersionsView)
    async def versions(request: Request, limit: int = Query(50, ge=1, le=1000)) -> Response:
        """Policy versions (newest first) with their broadcast progress: which advertised relays hold
        each version complete or in flight (relays are polled at most every few seconds)."""
        relays = await poller.refresh()
        n = _computed_for(limit, 50, 1000)

        def answer(_full: bool) -> dict:
            got = recent.get(("versions", n), lambda: views.version_rows(ctx, relays, n))
            return {**got, "versions": got["versions"][:limit]}

        return await api.viewed(request, "dash_versions", answer)

    @r.get(API + "/curve", response_model=list[CurvePoint])
    async def curve(request: Request, limit: int = Query(500, ge=1, le=100_000)) -> Response:
        """Training curve by policy version: mean reward of submissions (all, accepted) and the
        trainer's held-out accuracy (from its signed eval reports)."""
        n = _computed_for(limit, 500, 100_000)
        return await api.viewed(request, "dash_curve", lambda _full: views.trim_curve(
            recent.get(("curve", n), lambda: views.curve_data(ctx, n)), limit))

    @r.get(API + "/rejections", response_model=list[Rejection])
    async def rejections(request: Request, limit: int = Query(20, ge=1, le=1000)) -> Response:
        """The newest rejected submissions with the verifier's reason and failed checks, each with a
        link to its audit view (without the operator token: the failed checks' names, no numbers)."""
        n = _computed_for(limit, 20, 1000)
        return await api.viewed(request, "dash_rejections", lambda full: [
            privacy.rejection(r, full) for r in recent.get(("rejections", n), lambda: views.rejections(ctx, n))[:limit]])

    @r.get(API + "/rollouts/{submission_id}")
    async def rollout(request: Request, submission_id: str) -> Response:
        """One rollout's audit view: decoded prompt and completions, rewards, verdict and every check
        with its numbers (the same view as `swarmrl audit show`; seeds as decimal strings, since they
        exceed the integers a browser represents exactly). Without the operator token: decided
        submissions only, with the outcome and the failed checks' names (`coordinator.privacy`)."""
        return await api.viewed(request, "dash_rollout",
                                lambda full: privacy.rollout(views.rollout(ctx, submission_id), full))

    @r.post(routes.TRAINER_EVAL, tags=["training"],
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": Envelope.model_json_schema()}}}})
    async def eval_report(request: Request) -> Response:
        """`eval_report` signed by the operator key: held-out accuracy of one announced version."""
        return await api.signed(request, "eval", KIND_EVAL_REPORT, EvalReport,
                                lambda o, raw, addr: record_eval(ctx, o), signers=frozenset({ctx.operator.hex}),
                                role="the operator key")

    @r.get(routes.DASHBOARD, include_in_schema=False)
    async def page() -> RedirectResponse:
        return RedirectResponse(routes.DASHBOARD + "/")

    app.include_router(r)
    app.mount(routes.DASHBOARD, StaticFiles(directory=STATIC, html=True), name="dashboard")
