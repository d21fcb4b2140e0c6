"""The whole daemon against a coordinator that answers what it should not (a wrong URL, a
compromised or broken service): the worker neither ends with a traceback, nor holds more
work than it asked for, nor gives up finished work of its run to another run's coordinator.

Real HTTP on loopback (the fake coordinator of worker_fakes.py, one route made hostile by its
`hostile` hook), the real engine on the tiny model.
"""

from __future__ import annotations

import pytest

from fastapi.responses import JSONResponse, PlainTextResponse

from protocol import routes
from tests.waiting import wait_until


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
    assert "run info" in r.daemon.state.get("coordinator_error")
    del fake.hostile[routes.RUN]
    wait_until(lambda: len(fake.submissions) >= 1 or r.error is not None, what="a submission once the answer is usable")
    r.stop()
    assert r.error is None
