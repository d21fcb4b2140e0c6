"""A refusal that says nothing about the submission (worker.submitter.TRANSIENT_REFUSALS) keeps
it pending and retries it: a worker clock outside the coordinator's skew window (400 stale)
once set finished work aside for good, though the same body, sealed afresh once the clock is
right, is accepted."""

from __future__ import annotations

import time

import pytest

from tests.waiting import wait_until


@pytest.mark.parametrize("status, reason", [(400, "stale"), (400, "disconnected"), (408, "")])
def test_a_transient_refusal_keeps_the_submission_pending_until_it_goes_through(fake, versions, start_daemon,
                                                                                status, reason):
    versions.publish(0)
    fake.tasks_left = 1
    fake.refuse_submissions, fake.refuse_reason = status, reason
    r = start_daemon()
    wait_until(lambda: fake.submit_calls >= 2 or r.daemon.spool.rejected(), what="sends refused for now", timeout=60)
    assert r.daemon.spool.rejected() == [], "set aside on a transient refusal"
    assert len(r.daemon.spool.pending()) == 1
    fake.refuse_submissions = None   # the clock is right again
    wait_until(lambda: len(fake.submissions) == 1, what="the submission stored", timeout=60)
    time.sleep(0.2)
    r.stop()
    assert r.error is None, r.error
    assert r.daemon.spool.rejected() == [] and r.daemon.spool.pending() == []


def test_a_400_for_the_submission_itself_is_still_set_aside(fake, versions, start_daemon):
    versions.publish(0)
    fake.tasks_left = 1
    fake.refuse_submissions, fake.refuse_reason = 400, "bad_json"
    r = start_daemon()
    wait_until(lambda: len(r.daemon.spool.rejected()) == 1, what="set aside", timeout=60)
    r.stop()
    assert r.daemon.spool.pending() == []
