"""JSON log lines and the status view (the worker's retries: tests/unit/protocol/test_retry.py)."""

import json
import logging

from worker.state import WorkerState
from worker.view import JsonFormatter, render


def test_json_log_lines_carry_the_message_and_extras():
    rec = logging.LogRecord("worker", logging.WARNING, __file__, 1, "lease %s refused", ("l-1",), None)
    rec.lease_id = "l-1"
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "lease l-1 refused" and doc["level"] == "warning" and doc["lease_id"] == "l-1"


def test_status_view_shows_what_the_contributor_needs():
    from rich.console import Console

    st = WorkerState(peer_id="12D3KooWabc", coordinator_url="http://c", run_id="run")
    st.set(policy_version=3, newest_version=4, coordinator_up=False, coordinator_error="connection refused")
    st.progress(4, 5_000_000, 10_000_000)
    st.record_batch(1000, 2.0)
    st.add(submitted=5, accepted=3, rejected=1, credits_tokens=1234)
    console = Console(width=200, record=True)
    console.print(render(st.snapshot()))
    text = console.export_text()
    for part in ("12D3KooWabc", "unreachable", "v3", "newest v4", "downloading v4", "50%", "500.0 tokens/s",
                 "submitted 5", "accepted 3", "rejected 1", "1,234 accepted tokens"):
        assert part in text, part


def test_the_loop_time_is_counted_by_phase_including_the_current_one():
    import time

    st = WorkerState(peer_id="p")
    st.set(phase="leasing")
    time.sleep(0.05)
    st.set(phase="generating (2 tasks, v3)")
    time.sleep(0.05)
    st.set(phase="generating (2 tasks, v4)", leases_active=2)
    time.sleep(0.05)
    spent = st.snapshot()["phase_seconds"]
    assert set(spent) == {"starting", "leasing", "generating"}
    assert spent["leasing"] >= 0.05 and spent["generating"] >= 0.1


def test_the_p2p_row_counts_every_peer_holding_versions_not_the_sample_listed():
    """The p2p node lists 64 peers holding versions and states the total (shardcast.p2p.roles):
    the view shows the total."""
    from rich.console import Console

    snap = WorkerState(peer_id="p").snapshot()
    snap["p2p"] = {"connected": 3, "relays": [], "counters": {"served": 2},
                   "peers_holding": {f"peer-{i}": [1] for i in range(64)}, "peers_holding_total": 4096}
    console = Console(width=200, record=True)
    console.print(render(snap))
    assert "4096 peers holding versions" in console.export_text()
