"""swarmrl.procs: a role started at a lower priority (the demo's workers, nice 10) really gets
less of a busy CPU than a service, though every role runs in a session of its own, which
Linux's autogroup schedules as a group whose weight the process's own nice does not change.
Two real spinners started by `ProcessGroup`, pinned to one CPU."""

from __future__ import annotations

import os
import sys
import time

import pytest

from swarmrl.procs import AUTOGROUP, ProcessGroup

SPIN = """
import os, resource, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
start = float(sys.argv[2])             # both spin over the same wall-clock window (a slow start
time.sleep(max(0.0, start - time.time()))  # of one on a busy machine left the other alone on the CPU)
while time.time() < start + 2.0:
    pass
print("cpu", resource.getrusage(resource.RUSAGE_SELF).ru_utime, "priority", os.getpriority(os.PRIO_PROCESS, 0),
      "session", open("/proc/self/autogroup").read().split()[-1] if os.path.exists("/proc/self/autogroup") else "-",
      flush=True)
"""


def _cpu(log) -> tuple[float, int, str]:
    fields = log.read_text().split()
    i = fields.index("cpu")
    return float(fields[i + 1]), int(fields[i + 3]), fields[i + 5]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU affinity and autogroup are Linux's")
def test_a_niced_role_in_a_session_of_its_own_yields_the_cpu_to_a_service(tmp_path):
    (tmp_path / "spin.py").write_text(SPIN)
    cpu = sorted(os.sched_getaffinity(0))[-1]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    group = ProcessGroup(tmp_path / "logs")
    start = f"{time.time() + 3.0:.3f}"
    try:
        service = group.start("service", [str(cpu), start], env=env, module="spin")
        worker = group.start("worker", [str(cpu), start], env=env, module="spin", nice=10)
        deadline = time.monotonic() + 30
        while (service.alive or worker.alive) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        group.stop_all()
    service_cpu, service_nice, _ = _cpu(service.log)
    worker_cpu, worker_nice, worker_session = _cpu(worker.log)
    assert (service_nice, worker_nice) == (0, 10)
    if os.path.exists(AUTOGROUP):
        assert worker_session == "10", (worker_cpu, service_cpu)
    # nice 10 against 0 is a weight of 110 against 1024: ~1/9 of the CPU. With only the
    # process's nice, in a session of its own, it took half (the two spinners ~1:1).
    assert worker_cpu * 3 < service_cpu, (worker_cpu, service_cpu)
