"""The verifier's work loop against a small fake coordinator on 127.0.0.1: claims, signed
verdicts, backoff while the coordinator fails, refused verdicts, /health and /metrics."""

import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, envelope_digest, open_envelope
from protocol.http import ServerThread, SignedClient
from protocol.identity import KeyPair
from protocol.messages import KIND_CLAIM, KIND_VERDICT, ClaimRequest, Verdict, VerdictBatch
from tests.adversarial.harness import engine_for, generate_with, honest_submissions
from verifier.app import create_app
from verifier.judge import JudgeSettings
from verifier.metrics import VerifierMetrics
from verifier.service import VerifierService


class FakeCoordinator:
    """Hands out `jobs` once; fails the first `fail_claims` claims and the first verdict request
    with 503; refuses verdicts on `refuse` with 409; records every verdict it accepts. With
    `batch_route` it also serves POST /v1/verdicts/batch (an older coordinator does not)."""

    def __init__(self, verifier: KeyPair, jobs, *, fail_claims=2, refuse=(), batch_route=False):
        self.jobs = list(jobs)
        self.fail_claims = fail_claims
        self.failed_verdict = False
        self.refuse = set(refuse)
        self.verdicts: dict[str, Verdict] = {}
        self.claims = 0
        self.requests = {"single": 0, "batch": 0}
        app = FastAPI()

        def first_request_fails(kind: str) -> JSONResponse | None:
            """Count a verdict request; the first one of either kind is answered 503."""
            self.requests[kind] += 1
            if self.failed_verdict:
                return None
            self.failed_verdict = True
            return JSONResponse({"detail": "try again"}, status_code=503)

        def take(env: Envelope) -> tuple[int, str]:
            v = open_envelope(env, KIND_VERDICT, Verdict, signer=verifier.public, run_id="redteam",
                              audience=AUDIENCE_COORDINATOR).body
            if v.submission_id in self.refuse:
                return 409, "already decided"
            self.verdicts[v.submission_id] = v
            return 200, ""

        if batch_route:
            @app.post("/v1/verdicts/batch")
            async def verdict_batch(request: Request):
                batch = VerdictBatch.model_validate_json(await request.body())
                if failed := first_request_fails("batch"):
                    return failed
                outcomes = [take(env) for env in batch.envelopes]
                return {"results": [{"status": st, "detail": d} for st, d in outcomes]}

        @app.post("/v1/verification/claim")
        async def claim(request: Request):
            env = Envelope.model_validate_json(await request.body())
            body = open_envelope(env, KIND_CLAIM, ClaimRequest, signer=verifier.public, run_id="redteam",
                                 audience=AUDIENCE_COORDINATOR).body
            self.claims += 1
            if self.claims <= self.fail_claims:
                return JSONResponse({"detail": "database busy"}, status_code=503)
            out, self.jobs = self.jobs[: body.max_jobs], self.jobs[body.max_jobs:]
            return {"jobs": [j.model_dump(mode="json") for j in out]}

        @app.post("/v1/verdicts")
        async def verdict(request: Request):
            env = Envelope.model_validate_json(await request.body())
            if failed := first_request_fails("single"):
                return failed
            status, detail = take(env)
            return {"ok": True} if status == 200 else JSONResponse({"detail": detail}, status_code=status)

        self.server = ServerThread(app).start()


@pytest.mark.parametrize("batch_route", [True, False], ids=["verdict-batches", "one-by-one"])
def test_service_judges_claimed_jobs_and_survives_coordinator_errors(world, worker_key, batch_route):
    """The claim's verdicts go out in one request (retried whole after a 503; a refused element
    is dropped, the others kept); a coordinator without the batch route gets them one by one."""
    engine = engine_for(world.versions[1], 1)
    l1, e1 = world.lease(worker_key)
    l2, e2 = world.lease(worker_key)
    l3, e3 = world.lease(worker_key)
    honest = honest_submissions(engine, [l1, l2], 1)
    hot = generate_with(engine, l3, 1, temperature=3.0)  # sampled at another temperature
    jobs = [world.job(e1, honest[0], worker_key, submission_id="honest-1"),
            world.job(e2, honest[1], worker_key, submission_id="honest-2", full_check=False),
            world.job(e3, hot, worker_key, submission_id="cheat"),
            world.job(e1, honest[0], worker_key, submission_id="refused")]
    verifier = KeyPair.generate()
    fake = FakeCoordinator(verifier, jobs, refuse={"refused"}, batch_route=batch_route)
    metrics = VerifierMetrics()
    client = SignedClient(fake.server.url, verifier, run_id="redteam")
    service = VerifierService(client, coordinator_key=world.coordinator.public, tokenizer=world.tokenizer,
                              models=world.models, settings=JudgeSettings(run_id="redteam"), ledger=world.ledger,
                              metrics=metrics, batch_jobs=3, poll_interval_s=0.05)
    stop = threading.Event()
    health = ServerThread(create_app(service.status, metrics, {"verifier_id": verifier.peer_id})).start()
    t = threading.Thread(target=service.run, args=(stop,), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while len(fake.verdicts) < 3 or service.status()["jobs"] < 4:
            assert time.monotonic() < deadline, (fake.verdicts.keys(), service.status())
            time.sleep(0.05)
        v = fake.verdicts
        assert v["honest-1"].accepted and v["honest-1"].full_check
        assert {c.name for c in v["honest-1"].checks} == {"lease_and_data", "termination", "reward", "replay",
                                                          "proof", "sampling"}
        assert v["honest-2"].accepted and not v["honest-2"].full_check
        assert "proof" not in {c.name for c in v["honest-2"].checks}
        assert not v["cheat"].accepted and "sampling" in v["cheat"].reason
        assert "refused" not in v  # 409: dropped, not retried
        for job in jobs[:3]:  # each verdict names, signed, the envelopes it judged
            assert v[job.submission_id].submission_sha256 == envelope_digest(job.submission)
            assert v[job.submission_id].lease_sha256 == envelope_digest(job.lease)
        st = service.status()
        assert st["accepted"] == 2 and st["rejected"] == 1 and st["check_failures"].get("sampling") == 1
        assert "replay" in st["check_failures"]  # 'refused' re-used the lease of 'honest-1'
        h = httpx.get(health.url + "/health").json()
        assert h["status"] == "ok" and h["verifier_id"] == verifier.peer_id and h["jobs"] == 4
        text = httpx.get(health.url + "/metrics").text
        assert 'swarmrl_verifier_verdicts_total{outcome="accepted"} 2.0' in text
        assert 'swarmrl_verifier_check_failures_total{check="sampling"} 1.0' in text
        assert 'swarmrl_verifier_errors_total{kind="coordinator_unavailable"} 2.0' in text
        assert "swarmrl_verifier_prefill_seconds_count" in text
        if batch_route:  # claims of 3 jobs: one request for 3 verdicts and its retry; the last claim's one alone
            assert fake.requests["batch"] == 2 and fake.requests["single"] == 1
        else:
            assert fake.requests["single"] == 5 and fake.requests["batch"] == 0
    finally:
        stop.set()
        t.join(timeout=30)
        health.stop()
        fake.server.stop()
        client.close()
    assert not t.is_alive()


def _run_info_app(relays, coordinator: KeyPair | None = None):
    from protocol.messages import RunInfo

    app = FastAPI()
    coordinator = coordinator or KeyPair.generate()

    @app.get("/v1/run")
    def run():
        return RunInfo(run_id="r", coordinator_key=coordinator.public.hex, operator_key=coordinator.public.hex,
                       verifier_keys=[], relays=relays, current_policy_version=None, async_window=1).model_dump()

    return ServerThread(app).start()


def test_run_without_relays_is_a_clear_setup_error(tmp_path):
    import pytest

    from verifier.config import VerifierConfig
    from verifier.errors import SetupError
    from verifier.main import run

    server = _run_info_app([])
    try:
        cfg = VerifierConfig(coordinator_url=server.url, key_file=tmp_path / "v.key", data_dir=tmp_path / "v")
        with pytest.raises(SetupError, match="no shardcast relays"):
            run(cfg, stop=threading.Event())
        assert (tmp_path / "v.key").exists() and (tmp_path / "v" / "verifier.port").exists()
    finally:
        server.stop()


def test_run_waits_for_an_absent_coordinator_and_stops_on_request(tmp_path):
    from swarmrl.procs import free_port
    from verifier.config import VerifierConfig
    from verifier.main import run

    cfg = VerifierConfig(coordinator_url=f"http://127.0.0.1:{free_port()}", key_file=tmp_path / "v.key",
                         data_dir=tmp_path / "v")
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg, stop), daemon=True)
    t.start()
    from protocol.http import read_port_file

    port = read_port_file(tmp_path / "v" / "verifier.port", timeout_s=30)
    assert httpx.get(f"http://127.0.0.1:{port}/health").json()["state"] == "starting"
    stop.set()
    t.join(timeout=30)
    assert not t.is_alive()


def test_run_refuses_to_start_when_the_coordinator_serves_keys_other_than_the_pinned_ones(tmp_path):
    """Whoever answers GET /v1/run names the coordinator and operator keys; with pins, a key that
    differs stops the verifier before it claims anything or fetches any weights."""
    from protocol.errors import PinError
    from verifier.config import VerifierConfig
    from verifier.main import run

    real, impostor = KeyPair.generate(), KeyPair.generate()
    server = _run_info_app([], coordinator=impostor)
    try:
        cfg = VerifierConfig(coordinator_url=server.url, key_file=tmp_path / "v.key", data_dir=tmp_path / "v",
                             pins={"coordinator": real.public.hex, "operator": real.public.hex})
        with pytest.raises(PinError, match=f"names operator key {impostor.public.hex[:16]}.*coordinator key"):
            run(cfg, stop=threading.Event())
        # pinned to what it serves, the verifier gets past the pins (to the next set-up error here)
        from verifier.errors import SetupError

        ok = cfg.model_copy(update={"pins": cfg.pins.model_copy(update={"coordinator": impostor.public.hex,
                                                                          "operator": impostor.public.hex})})
        with pytest.raises(SetupError, match="no shardcast relays"):
            run(ok, stop=threading.Event())
    finally:
        server.stop()
