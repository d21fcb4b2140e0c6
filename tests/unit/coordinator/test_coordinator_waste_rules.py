"""Issue 23's pure rules: lease sizing (`coordinator.rules.lease_size`), the waste report
(`coordinator.rules.waste`) and the staleness floors (`protocol.window`)."""

from types import SimpleNamespace as Row

from coordinator.rules.lease_size import (
    MAX_REFUSED_POLLS_PER_S,
    MAX_RETRY_S,
    MIN_RETRY_S,
    Demand,
    SizingTerms,
    leases_allowed,
    spread_retry,
    version_interval,
    worker_rate,
)
from coordinator.rules.waste import report, summary_line
from protocol.window import buffer_floor, staleness_limit

TERMS = SizingTerms()
NOW = 1000.0


def _leases(n: int, every_s: float, latency_s: float, end: float = NOW) -> list[tuple[float, float]]:
    """`n` submitted leases, one finished every `every_s` seconds up to `end`, each `latency_s` long."""
    return [(end - i * every_s - latency_s, end - i * every_s) for i in range(n)]


def _versions(n: int, every_s: float, end: float = NOW) -> list[float]:
    return [end - (n - 1 - i) * every_s for i in range(n)]


def _allowed(recent, arrivals, staleness=4, verify=(0.5,), max_leases=64, terms=TERMS, held=0, demand=None) -> int:
    return leases_allowed(max_leases=max_leases, held=held, recent=recent, arrivals=arrivals, staleness=staleness,
                          verify_s=list(verify), demand=demand, now=NOW, terms=terms).allowed


def test_a_worker_gets_what_it_can_submit_before_its_groups_go_stale():
    # 2 groups/s; versions every 2 s, 4 versions of staleness, 0.5 s verification, 0.5 s margin:
    # a lease has 8 - 1 = 7 s, in which this worker finishes 14 groups
    fast = _leases(16, every_s=0.5, latency_s=2.0)
    assert worker_rate(fast) == 16 / (15 * 0.5 + 2.0)
    allowed = _allowed(fast, _versions(8, 2.0))
    assert allowed == int(worker_rate(fast) * 7.0) and 10 <= allowed <= 14
    # the same worker when versions come twice as fast gets about half
    assert _allowed(fast, _versions(8, 1.0)) < allowed * 0.6


def test_a_worker_that_falls_behind_gets_less_but_never_nothing():
    fast = _allowed(_leases(16, every_s=0.5, latency_s=2.0), _versions(8, 2.0))
    slow = _allowed(_leases(16, every_s=2.0, latency_s=8.0), _versions(8, 2.0))
    assert 1 <= slow < fast / 3
    # slower than the window itself (verification alone exceeds the budget): one lease, still measured
    assert _allowed(_leases(16, every_s=5.0, latency_s=20.0), _versions(8, 0.2), staleness=1, verify=(3.0,)) == 1


def test_new_workers_and_runs_without_a_version_rate_get_the_fixed_allowances():
    assert _allowed(_leases(2, 0.5, 2.0), _versions(8, 2.0)) == TERMS.new_worker_leases
    assert _allowed(_leases(16, 0.5, 2.0), _versions(2, 2.0)) == 64      # too few versions: only the quota
    assert _allowed(_leases(16, 0.5, 2.0), _versions(8, 2.0), max_leases=5) == 5
    off = SizingTerms(enabled=False)
    assert _allowed(_leases(16, 5.0, 20.0), _versions(8, 0.2), terms=off) == 64


def test_workers_that_together_outrun_the_trainer_get_only_what_it_can_take_in_time():
    """The trainer takes 20 groups a version: at most demand_steps (2) versions' worth, 40 groups,
    may be on their way to it; a fast worker gets what is left of that room, and waits when there
    is none left (unless nothing at all is on its way)."""
    fast = _leases(16, every_s=0.1, latency_s=0.5)
    own = _allowed(fast, _versions(8, 2.0))                                   # no demand measured: its own bound
    assert own == 56                                                          # 8 groups/s x 7 s
    assert _allowed(fast, _versions(8, 2.0), held=3, demand=Demand(20.0, 30)) == 3 + 10
    assert _allowed(fast, _versions(8, 2.0), held=0, demand=Demand(20.0, 130)) == 0   # it waits for the trainer
    assert _allowed(fast, _versions(8, 2.0), held=2, demand=Demand(20.0, 130)) == 2
    assert _allowed(fast, _versions(8, 2.0), held=0, demand=Demand(0.1, 0)) == 1      # nothing on its way: one
    assert _allowed(fast, _versions(8, 2.0), held=0, demand=Demand(40.0, 0)) == own   # room enough: its own bound
    slow = _leases(16, every_s=2.0, latency_s=8.0)
    assert _allowed(slow, _versions(8, 2.0), demand=Demand(20.0, 0)) == _allowed(slow, _versions(8, 2.0))
    # synchronous (staleness 0): room for the next step only; otherwise demand_steps' worth
    assert Demand(20.0, 5).room(0, 2.0) == 15 and Demand(20.0, 5).room(4, 2.0) == 35


def test_a_worker_refused_for_lack_of_room_asks_again_within_a_share_of_the_version_interval():
    """Room appears when the trainer takes its next batch, about once a version: a worker that
    waits for it asks again after a quarter of the interval (the demo's 1 s versions: 0.25 s, not
    the fixed 1 s that left its workers idle half of the time), never faster than MIN_RETRY_S,
    never slower than MAX_RETRY_S (the old fixed wait: slow runs poll no faster than before)."""
    fast = _leases(16, every_s=0.1, latency_s=0.5)

    def refused(every_s: float, n_versions: int = 8):
        return leases_allowed(max_leases=64, held=0, recent=fast, arrivals=_versions(n_versions, every_s), staleness=4,
                              verify_s=[0.1], demand=Demand(20.0, 130), now=NOW, terms=TERMS)

    assert refused(1.0).allowed == 0 and refused(1.0).retry_after_s == 0.25
    assert refused(0.2).retry_after_s == MIN_RETRY_S and refused(60.0).retry_after_s == MAX_RETRY_S
    assert refused(1.0, n_versions=2).retry_after_s == MAX_RETRY_S          # no interval yet
    # not refused by the swarm bound: no advice (the caller's fixed wait)
    assert leases_allowed(max_leases=64, held=0, recent=fast, arrivals=_versions(8, 1.0), staleness=4, verify_s=[0.1],
                          demand=None, now=NOW, terms=TERMS).retry_after_s is None


def test_a_large_swarm_of_refused_workers_polls_no_faster_than_before():
    """The shorter wait is spread over the swarm: its active workers together ask at most
    MAX_REFUSED_POLLS_PER_S times a second, and never wait longer than MAX_RETRY_S."""
    assert spread_retry(0.25, 3) == 0.25                          # the demo's three workers: the advice
    assert spread_retry(0.25, 100) == 100 / MAX_REFUSED_POLLS_PER_S  # 0.5 s: 200 requests a second in all
    assert spread_retry(0.25, 1000) == MAX_RETRY_S                 # 1,000 workers: 1 s, as before issue 23
    assert spread_retry(None, 3) == MAX_RETRY_S


def test_a_trainer_that_waits_for_data_stretches_the_interval():
    arrivals = _versions(8, 1.0, end=NOW - 30.0)           # versions every second, none for 30 s
    assert version_interval(arrivals, NOW) == 30.0
    assert version_interval(_versions(8, 1.0), NOW) == 1.0 and version_interval([NOW], NOW) is None


def test_the_trainers_staleness_limit_keeps_more_of_the_buffer_but_never_less_than_the_window():
    assert staleness_limit(2, 4) == 4 and staleness_limit(2, 0) == 2
    assert buffer_floor(10, 2, None) == 8                  # no trainer has asked yet: the window
    assert buffer_floor(10, 2, 6) == 6                     # a trainer with limit 4 asked from 6
    assert buffer_floor(10, 2, 9) == 8                     # never above the window's floor
    assert buffer_floor(None, 2, 3) == 0


def test_the_waste_report_splits_accepted_groups_by_cause_and_prices_them_in_worker_seconds():
    rows = [Row(worker_id="a", cause=None, buffer="consumed", groups=80, tokens=800),
            Row(worker_id="a", cause="stale", buffer="stale", groups=5, tokens=50),
            Row(worker_id="b", cause="stale_held", buffer="stale", groups=2, tokens=40),
            Row(worker_id="b", cause="zero_advantage", buffer="consumed", groups=10, tokens=200),
            Row(worker_id="b", cause="ban", buffer="dropped", groups=1, tokens=20),
            Row(worker_id="b", cause=None, buffer="ready", groups=2, tokens=40)]
    spans = [Row(worker_id="a", tokens=850, first=0.0, last=85.0),    # 0.1 s per token
             Row(worker_id="b", tokens=300, first=10.0, last=40.0)]   # 0.1 s per token
    w = report(rows, spans)
    assert (w["accepted"], w["taken"]) == (100, 80)
    c = w["causes"]
    assert {k: v["groups"] for k, v in c.items() if v["groups"]} == {
        "stale": 5, "stale_held": 2, "zero_advantage": 10, "ban": 1, "in_buffer": 2}
    assert c["stale"]["worker_s"] == 5.0 and c["zero_advantage"]["worker_s"] == 20.0
    assert w["unused_share"] == 0.2 and w["stale_share"] == 0.07 and w["worker_s"] == 5 + 4 + 20 + 2 + 4
    line = summary_line(w)
    assert line.startswith("accepted groups never trained: 20.0% of 100 (stale 7.0%)") and "zero advantage 10.0%" in line
    assert report([], [])["unused_share"] == 0.0


def test_new_identities_hold_at_most_their_share_of_the_swarm_bound_on_top_of_the_established_workers():
    # the trainer takes 8 groups a version, a bound of 2 versions' worth: 16; new identities' share 0.25: 4
    crowded = Demand(per_version=8, in_flight=2, new=4, new_share=0.25)
    assert crowded.room(4, 2.0, new_identity=True) == 0             # their 4 are taken
    assert crowded.room(4, 2.0, new_identity=False) == 16 - 2       # the bound stays the established workers'
    assert Demand(8, in_flight=2, new=1, new_share=0.25).room(4, 2.0, new_identity=True) == 3
    # established workers that fill the bound leave the new identities' share as it is
    assert Demand(8, in_flight=16, new=1, new_share=0.25).room(4, 2.0, new_identity=True) == 3
    assert Demand(8, in_flight=16, new=1, new_share=0.25).room(4, 2.0, new_identity=False) == 0
    # new identities over their share (it shrank) cost established workers nothing
    assert Demand(8, in_flight=0, new=10, new_share=0.25).room(4, 2.0, new_identity=False) == 16
    # no established worker active (a run's start: everyone is new): one pool, as before
    assert Demand(8, in_flight=0, new=10, new_share=None).room(4, 2.0, new_identity=True) == 6
    # through the rule: a new identity holding none is refused; an established worker gets its own bound
    recent, arrivals = _leases(16, every_s=0.5, latency_s=1.0), _versions(8, every_s=2.0)
    assert _allowed(recent, arrivals, demand=crowded) > 0
    assert leases_allowed(max_leases=64, held=0, recent=recent, arrivals=arrivals, staleness=4, verify_s=[0.5],
                          demand=crowded, now=NOW, terms=TERMS, new_identity=True).allowed == 0


def test_a_worker_that_dropped_leases_and_never_submitted_one_holds_one_at_a_time():
    def allowed(recent, dropped):
        return leases_allowed(max_leases=64, held=0, recent=recent, arrivals=_versions(8, every_s=2.0), staleness=4,
                              verify_s=[0.5], demand=None, now=NOW, terms=TERMS, dropped=dropped).allowed

    assert allowed([], dropped=0) == TERMS.new_worker_leases
    assert allowed([], dropped=8) == 1                          # sat on its first leases until they expired
    recent = _leases(16, every_s=0.5, latency_s=1.0)
    assert allowed(recent, dropped=8) == allowed(recent, dropped=0) > 1   # it submits: its rate decides
