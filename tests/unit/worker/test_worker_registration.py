"""Two of the worker's threads learn from the same forgetting that the coordinator no longer
knows the worker (worker.registration): it registers once, and the finished submission whose
answer said "unknown worker" is sent again, not set aside.

The daemon here is not running: the test drives the sender's flush itself and runs the loop's
lease request on another thread at the moment that makes the race (against the fake
coordinator on loopback, real HTTP)."""

from __future__ import annotations

import threading

import pytest
from worker_fakes import worker_config

from protocol.errors import Rejected
from protocol.messages import Completion, Submission


@pytest.fixture
def daemon(fake, versions, tmp_path):
    from worker.daemon import Daemon
    from worker.engines.transformers_engine import TransformersEngine

    d = Daemon(worker_config(fake.url, tmp_path), TransformersEngine(device="cpu", dtype="float32", threads=1),
               weights_client=versions.weights)
    try:
        yield d
    finally:
        d.coord.close()


@pytest.mark.parametrize("during", ["the submission's answer", "the known-worker check"])
def test_a_forgetting_two_threads_learn_registers_once_and_loses_no_submission(fake, daemon, monkeypatch, during):
    d = daemon
    d._join()
    [lease] = d._lease(1, False)
    sub = Submission(lease_id=lease.lease_id, policy_version=0, engine=d.engine.info(),
                     completions=[Completion(token_ids=[1], finish_reason="eos", proof="") for _ in lease.seeds])
    d.spool.put(sub, 2, lease.expires_at)
    fake.forget_workers()
    # the loop's next lease request learns it too, and registers, while the sender's answer
    # travels (it says "unknown worker": the answer was made before that registration)
    loop = threading.Thread(target=d._lease, args=(1, False), daemon=True)

    def loop_registers_meanwhile() -> None:
        if not loop.ident:
            loop.start()
            loop.join(2.0)   # (where the check and the registration are one step, the loop waits for it)

    def answered_during_the_race(real, moment: str):
        def call(*args):
            try:
                return real(*args)
            except Rejected:
                if during == moment:
                    loop_registers_meanwhile()
                raise
        return call

    monkeypatch.setattr(d.coord, "submit", answered_during_the_race(d.coord.submit, "the submission's answer"))
    monkeypatch.setattr(d.coord, "worker_info", answered_during_the_race(d.coord.worker_info, "the known-worker check"))
    d.submitter.flush(d.stop)
    loop.join(30)
    assert not loop.is_alive()
    assert fake.workers[d.worker_id]["registrations"] == 1, "registered twice under one identity"
    assert d.spool.rejected() == [], "a deliverable submission was set aside as refused"
    assert d.spool.pending() == [] and lease.lease_id in fake.by_lease
