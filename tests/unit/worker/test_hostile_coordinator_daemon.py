"""The whole daemon against a coordinator that answers what it should not (a wrong URL, a
compromised or broken service): the worker neither ends with a traceback, nor holds more
work than it asked for, nor gives up finished work of its run to another run's coordinator.

Real HTTP on loopback (the fake coordinator of worker_fakes.py, one route made hostile by its
`hostile` hook), the real engine on the tiny model.
"""

from __future__ import annotations

import time

import pytest
from fastapi.responses import JSONResponse, PlainTextResponse

from protocol import routes
from protocol.envelope import AUDIENCE_WORKER, Envelope, seal
from protocol.identity import PublicKey
from protocol.messages import KIND_LEASE, Completion, EngineInfo, Lease, LeaseResponse, SamplingParams, Submission
from tests.waiting import wait_until
from worker.spool import Spool


async def _signer(request) -> str:
    """The worker id of the signer of a request to the fake coordinator."""
    return PublicKey.from_hex(Envelope.model_validate_json(await request.body()).signer).peer_id


def _signed_lease(fake, worker_id: str, lease_id: str, task_id: str, seeds: list[int], **terms):
    """A lease the fake coordinator signs and remembers: a 3-token prompt, 2 tokens at
    temperature 1, version 0, 600 s from now, unless `terms` say otherwise."""
    now = time.time()
    body = dict(run_id="run", prompt_token_ids=[5, 6, 7], sampling=SamplingParams(temperature=1.0, max_tokens=2),
                eos_token_id=1, min_policy_version=0, max_policy_version=0, issued_at=now, expires_at=now + 600)
    lease = Lease(lease_id=lease_id, worker_id=worker_id, task_id=task_id, seeds=seeds, **{**body, **terms})
    fake.leases[lease.lease_id] = lease
    return seal(KIND_LEASE, lease, fake.key, run_id="run", audience=AUDIENCE_WORKER)


def _answer(*leases) -> JSONResponse:
    return JSONResponse(LeaseResponse(leases=list(leases)).model_dump(mode="json"))


def test_a_release_answered_with_garbage_does_not_end_the_daemon(fake, versions, start_daemon):
    """POST /v1/leases/release answered 200 with a body that is no JSON: `release` raised
    JSONDecodeError, which `_release` did not catch, so the stop that releases the unstarted
    leases ended `Daemon.run` with a traceback (and skipped the rest of the shutdown)."""
    async def garbage(request):
        return PlainTextResponse("<html>proxy error</html>", status_code=200)

    fake.hostile[routes.LEASE_RELEASE] = garbage
    fake.version, fake.window = 1, 0   # leases allow only version 1, which is not published:
    versions.publish(0)                # the worker holds them, waiting, when it is stopped
    r = start_daemon(max_tasks=4)
    wait_until(lambda: r.daemon.state.get("leases_active") > 0, what="leases held")
    r.stop()
    assert r.error is None, f"the daemon ended with {r.error!r}"
    assert r.daemon.state.get("leases_active") == 0



def test_a_lease_answer_with_more_leases_than_asked_is_cut_to_the_request(fake, versions, start_daemon):
    """Asked for 2 tasks, the coordinator signs and sends 200 (the schema refuses more than 256
    outright, protocol.messages.LeaseResponse): each was opened (an Ed25519 check each) and
    held, whatever the worker had shown it could finish in the TTL. Only as many as were asked
    for are taken."""
    answers: list[int] = []

    async def flood(request):
        wid = await _signer(request)
        leases = []
        for i in range(200):
            n = len(answers) * 1000 + i
            leases.append(_signed_lease(fake, wid, f"flood-{n}", f"t{n}", [n, n + 1]))
        answers.append(len(leases))
        return _answer(*leases)

    fake.hostile[routes.LEASES] = flood
    versions.publish(0)
    r = start_daemon(max_tasks=2)
    most = wait_until(lambda: answers and r.daemon.state.get("leases_active"), what="the flooded answer taken")
    t_end = time.monotonic() + 2
    while time.monotonic() < t_end:
        most = max(most, r.daemon.state.get("leases_active"))
        time.sleep(0.01)
    r.stop()
    assert r.error is None
    assert most <= 2 * 2, f"held {most} leases having asked for 2 at a time (and 2 ahead)"


def _submission(lease_id: str) -> Submission:
    return Submission(lease_id=lease_id, policy_version=0,
                      completions=[Completion(token_ids=[1], finish_reason="eos", proof="AAAA")],
                      engine=EngineInfo(name="transformers"))


def test_finished_work_of_another_run_stays_pending(fake, versions, start_daemon, tmp_path):
    """The spool held a finished submission of run 'old-run' when the worker was started
    against a coordinator of run 'run' (a wrong URL, or the operator's next run): it was sealed
    for 'run', refused there (unknown lease: 404, the worker known) and set aside under
    rejected/ for good, never to be sent to its own run's coordinator. It stays in pending/,
    sent only to a coordinator of its run."""
    spool = Spool(tmp_path / "worker" / "spool")
    spool.put(_submission("lease-of-old-run"), tokens=1, expires_at=time.time() + 3600, run_id="old-run")
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 2, what="two submissions of this run")
    r.stop()
    assert r.error is None
    assert spool.rejected() == []
    assert [e.lease_id for e in spool.pending()] == ["lease-of-old-run"]
    assert fake.submit_calls == len(fake.submissions), "the other run's submission was sent here"


def test_relays_the_coordinator_advertises_are_checked_and_bounded(fake, tmp_path):
    """GET /v1/run names the relays to fetch weights from. One that is no http(s) URL made the
    shardcast client raise at start-up, so the daemon exited (at every restart: a crash loop
    while the coordinator advertises it); 5,000 of them were all long-polled at once, each
    round, a connection each. Unusable ones are dropped with a warning, and a sample of at most
    MAX_ADVERTISED_RELAYS is kept."""
    from worker.daemon import MAX_ADVERTISED_RELAYS, Daemon
    from worker.engines.transformers_engine import TransformersEngine
    from worker_fakes import Running, worker_config

    # as many and as long as RunInfo lets through (protocol.messages.MAX_RELAYS, MAX_URL_CHARS): more
    # is no RunInfo at all, an unusable answer waited out like an outage
    fake.relays = ["ftp://relay.example", "http://bad\x01url", *(f"http://127.0.0.1:9/r{i}" for i in range(62))]
    cfg = worker_config(fake.url, tmp_path)
    r = Running(Daemon(cfg, TransformersEngine(device="cpu", dtype="float32", threads=1))).start()
    wait_until(lambda: r.error is not None or r.daemon.sync is not None, what="the policy downloader started")
    try:
        assert r.error is None, f"the daemon ended with {r.error!r}"
        urls = r.daemon.sync.client.sources.urls
        assert 0 < len(urls) <= MAX_ADVERTISED_RELAYS
        assert all(u.startswith("http://127.0.0.1:9/r") for u in urls)
    finally:
        r.stop()


@pytest.mark.parametrize("change", [{"run_id": "a run id no envelope can carry"}, {"allowed_dtypes": []},
                                    {"allowed_dtypes": ["float8"]}])
def test_an_unusable_run_info_is_waited_out_like_an_outage(fake, versions, start_daemon, change):
    """GET /v1/run with a run id that no signed message may carry (signing raised a validation
    error out of the registration), or with no or unknown compute dtypes ('auto' picked
    `allowed[0]`: IndexError, or tried to compute in 'float8'): the daemon ended at start-up, at
    every restart. It is a coordinator answering nonsense: retried with backoff, the reason on
    the status page, and the worker joins once the answer is usable."""
    bad = {**fake.run_info().model_dump(mode="json"), **change}

    async def nonsense(request):
        return JSONResponse(bad)

    fake.hostile[routes.RUN] = nonsense
    versions.publish(0)
    r = start_daemon(dtype="auto")
    wait_until(lambda: r.error is not None or r.daemon.state.get("coordinator_error"), what="the run info refused")
    assert r.error is None, f"the daemon ended with {r.error!r}"
    err = r.daemon.state.get("coordinator_error")
    assert "run info" in err or "run_id" in err, err  # the worker's check, or RunInfo's own bound
    del fake.hostile[routes.RUN]
    wait_until(lambda: len(fake.submissions) >= 1 or r.error is not None, what="a submission once the answer is usable")
    r.stop()
    assert r.error is None


def test_untrusted_text_from_the_coordinator_enters_log_lines_cut(fake, versions, start_daemon, caplog):
    """A verdict's `reason` and an intake answer's `message` are logged per submission: 4 MB of
    either made a 4 MB log line for every submission (the log's disk filled at the pace of the
    worker's work). They enter log lines cut to a few hundred characters."""
    async def wordy_intake(request):
        fake.submit_calls += 1
        return JSONResponse({"submission_id": f"s-{fake.submit_calls}", "status": "rejected",
                             "message": "M" * 4_000_000})

    fake.hostile[routes.SUBMISSIONS] = wordy_intake
    versions.publish(0)
    with caplog.at_level("INFO"):
        r = start_daemon()
        wait_until(lambda: fake.submit_calls >= 2, what="two submissions")
        r.stop()
    assert r.error is None
    longest = max(len(rec.getMessage()) for rec in caplog.records)
    assert longest < 2000, f"a log line of {longest} characters"


def test_a_run_change_mid_run_ends_the_daemon_with_a_clear_error(fake, versions, start_daemon):
    """The coordinator forgets the worker, and its GET /v1/run and registration answer now name
    another run. The worker registered into it and went on with the first run's shardcast client
    (the old operator key: every new manifest refused, its relays marked hostile), dtype and
    spool, and refused every lease of the new run as signed for another: wedged, idle for ever.
    It ends with an error saying so; a start joins the new run cleanly, and finished work of the
    first run stays in the spool (test_finished_work_of_another_run_stays_pending)."""
    from protocol.messages import RegistrationResponse

    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1, what="a submission")
    other = fake.run_info().model_copy(update={"run_id": "run2"})

    async def run2(request):
        return JSONResponse(other.model_dump(mode="json"))

    registered: list[str] = []

    async def register_run2(request):
        wid = await _signer(request)
        registered.append(wid)
        return JSONResponse(RegistrationResponse(worker_id=wid, run=other).model_dump(mode="json"))

    async def no_work(request):  # once registered into run2 (the fake's own refuses run2's requests)
        return JSONResponse({"leases": [], "retry_after_s": 0.2}) if registered else None

    fake.hostile[routes.RUN] = run2
    fake.hostile[routes.REGISTER] = register_run2
    fake.hostile[routes.LEASES] = no_work
    fake.forget_workers()
    wait_until(lambda: r.error is not None, timeout=30, what="the daemon to end")
    assert "run2" in str(r.error) and "'run'" in str(r.error)
    assert not r.thread.is_alive() or r.thread.join(10) is None


@pytest.mark.parametrize("difficulty, refused", [(200, True), (30, False)])
def test_a_proof_of_work_the_worker_cannot_finish_does_not_hold_it(fake, versions, start_daemon, difficulty, refused):
    """GET /v1/run asks for a registration proof of work of `difficulty` leading zero bits. 200
    (no coordinator asks for more than 32) was ~2**200 hashes: the daemon spun a core for ever, and
    `solve_pow` never looked at the stop, so SIGTERM could not end it. 30 (allowed: about 2**30
    hashes, ~15 min here) held a stop as long. Over 32 is an unusable run info (waited out); a
    solve in progress ends within a moment of a stop."""
    bad = fake.run_info().model_copy(update={"pow_difficulty": difficulty, "pow_challenge": "c" * 32})

    async def hard(request):
        return JSONResponse(bad.model_dump(mode="json"))

    fake.hostile[routes.RUN] = hard
    versions.publish(0)
    r = start_daemon()
    if refused:
        wait_until(lambda: any(w in r.daemon.state.get("coordinator_error") for w in ("proof of work", "pow_difficulty")),
                   what="the run info refused")  # the worker's check, or RunInfo's own bound
    else:
        wait_until(lambda: r.daemon.state.get("phase") == "joining", what="joining")
        time.sleep(1.0)  # solving now
    t0 = time.monotonic()
    r.daemon.request_stop()
    r.thread.join(10)
    assert not r.thread.is_alive(), "the daemon did not stop within 10 s of a stop"
    assert time.monotonic() - t0 < 5


def test_a_lease_with_absurd_times_does_not_end_the_daemon(fake, versions, start_daemon):
    """Leases issued at -1.7e308 expiring at 1.7e308 (finite floats, valid to the schema): their TTL,
    expires_at - issued_at, is infinity, and sizing the next request took int(inf / ...): an
    OverflowError out of the loop once the first batch had set the worker's speed (the daemon
    ended, again at every restart while the coordinator leases so)."""
    async def absurd(request):
        wid = await _signer(request)
        n = len(fake.leases) + 1
        return _answer(_signed_lease(fake, wid, f"absurd-{n}", f"t{n}", [n, n + 1], issued_at=-1.7e308,
                                     expires_at=1.7e308))

    fake.hostile[routes.LEASES] = absurd
    versions.publish(0)
    r = start_daemon(max_tasks=1)
    wait_until(lambda: len(fake.submissions) >= 3 or r.error is not None, what="three submissions")
    r.stop()
    assert r.error is None, f"the daemon ended with {r.error!r}"


def test_a_lease_the_model_cannot_run_is_given_back_not_a_crash(fake, versions, start_daemon):
    """A signed lease whose prompt holds token id 2**31-1 (valid to the schema, far outside the
    model's vocabulary): the engine's embedding lookup raised IndexError out of generate_batch,
    past the loop: the daemon ended with the batch's other leases, and at every restart while the
    coordinator leases so. The batch's leases are given back, the error said, and work goes on."""
    bad = {"done": False}

    async def one_bad_lease(request):
        if bad["done"]:
            return None
        bad["done"] = True
        return _answer(_signed_lease(fake, await _signer(request), "out-of-vocab", "t-oov", [1, 2],
                                     prompt_token_ids=[5, 2**31 - 1], expires_at=time.time() + 60))

    fake.hostile[routes.LEASES] = one_bad_lease
    versions.publish(0)
    r = start_daemon(max_tasks=1)
    wait_until(lambda: len(fake.submissions) >= 2 or r.error is not None, what="submissions after the bad lease")
    r.stop()
    assert r.error is None, f"the daemon ended with {r.error!r}"
    assert "out-of-vocab" in fake.released


@pytest.mark.parametrize("status, reason", [(400, "stale"), (408, ""), (409, "whatever")])
def test_a_refused_lease_request_is_asked_again_not_an_exit(fake, versions, start_daemon, monkeypatch,
                                                            status, reason):
    """A lease request answered with a 4xx other than 401/403/404/422 (a worker clock outside the
    coordinator's skew window: 400 stale; a proxy's 408; anything a broken or hostile coordinator
    says) raised WorkerError out of the loop: the daemon exited, and at every restart for as long
    as the answer stays (a clock that stays off: a crash loop). It waits and asks again."""
    import worker.daemon

    monkeypatch.setattr(worker.daemon, "LEASE_REFUSED_WAIT_S", 0.2)
    refusals = []

    async def refuse_twice(request):
        if len(refusals) >= 2:
            return None
        refusals.append(status)
        return JSONResponse({"detail": "refused by the test", "reason": reason}, status_code=status)

    fake.hostile[routes.LEASES] = refuse_twice
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1 or r.error is not None, what="a submission after two refusals")
    r.stop()
    assert r.error is None, f"the daemon ended with {r.error!r}"
    assert len(refusals) == 2


def test_a_refused_registration_is_tried_again_not_an_exit(fake, versions, start_daemon, monkeypatch):
    """A registration answered 400 stale (a worker clock outside the coordinator's skew window) or
    any 4xx but a ban raised WorkerError: at start-up the daemon exited (at every restart while
    the clock stayed off); after a forgetting, from the background sender's thread, that thread
    died and nothing more was sent. It registers again, from a fresh GET /v1/run, after a wait."""
    import worker.daemon

    monkeypatch.setattr(worker.daemon, "REGISTER_REFUSED_WAIT_S", 0.2)
    refusals = []

    async def refuse_twice(request):
        if len(refusals) >= 2:
            return None
        refusals.append(1)
        return JSONResponse({"detail": "timestamp outside the accepted window", "reason": "stale"}, status_code=400)

    fake.hostile[routes.REGISTER] = refuse_twice
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1 or r.error is not None, what="a submission after two refusals")
    r.stop()
    assert r.error is None, f"the daemon ended with {r.error!r}"
    assert len(refusals) == 2


def test_a_coordinator_that_forgets_the_worker_at_every_lease_request_is_not_hammered(fake, versions, start_daemon):
    """Every lease request answered 404 (unknown worker) though each registration succeeds: the
    loop registered again (GET /v1/run, a proof of work, POST) and asked again at once, without
    a pause, as fast as the round trips allowed. A registration that is refused again straight
    away is followed by a wait."""
    registrations = []

    async def count(request):
        registrations.append(time.monotonic())
        return None

    async def forgotten(request):
        return JSONResponse({"detail": "unknown worker; register first"}, status_code=404)

    fake.hostile[routes.REGISTER] = count
    fake.hostile[routes.LEASES] = forgotten
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: registrations, what="a registration")
    time.sleep(4.0)
    r.stop()
    assert r.error is None
    assert len(registrations) <= 4, f"{len(registrations)} registrations in about 4 s"


def test_a_lease_for_a_version_no_relay_serves_is_given_back_after_a_bounded_wait(fake, versions, start_daemon,
                                                                                     monkeypatch):
    """A lease for policy version 10**9 (no relay will ever serve it) expiring in a day: the
    worker waited for that version until the lease expired, holding it and its loop (no other
    work done); only a stop ended it. Now a wait in which no version the lease allows even
    starts to download is bounded (`VERSION_WAIT_S`, here 1 s): the lease is given back, the
    version no longer wanted, and the worker goes on with other leases."""
    import worker.daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "VERSION_WAIT_S", 1.0)
    sent = {"far": False}

    async def far_future_once(request):
        if sent["far"]:
            return None
        sent["far"] = True
        return _answer(_signed_lease(fake, await _signer(request), "far-future", "t-far", [1, 2],
                                     min_policy_version=10**9, max_policy_version=10**9,
                                     expires_at=time.time() + 86400))

    fake.hostile[routes.LEASES] = far_future_once
    versions.publish(0)
    r = start_daemon(max_tasks=1)
    try:
        wait_until(lambda: "far-future" in fake.released and len(fake.submissions) >= 2 or r.error is not None,
                   timeout=30, what="the far-future lease given back and other work submitted")
        assert r.error is None, f"the daemon ended with {r.error!r}"
        assert 10**9 not in r.daemon.sync._wanted
    finally:
        r.stop()
