"""The near-tie CUSUM: the near-tie test summed a worker's whole history, so honesty could be
banked. A worker with 1M honestly checked tokens that then samples at another temperature (~5%
of its tokens off the seeded choice, each within the sampling tolerance: every check passes and
releases its held groups) stayed under the test for ~119,000 checked cheating tokens. The
CUSUM beside it forgets an honest past: the change is banned within a few checks."""

import random

from coordinator.rules import near_ties
from tests.verdict_fixtures import passing_checks

P, ALPHA = 0.005, 1e-6


def test_an_honest_stream_stays_far_below_the_ban_and_a_banked_past_buys_a_cheater_nothing():
    rng = random.Random(0)
    score, peak = 0.0, 0.0
    for _ in range(10_000):           # 10,000 full checks of 256 tokens at the worst measured honest rate, 0.16%
        ties = sum(rng.random() < 0.0016 for _ in range(256))
        score = near_ties.score(score, ties, 256, honest_rate=P)
        peak = max(peak, score)
    assert not near_ties.banned_by_score(peak, alpha=ALPHA) and peak < 6, peak
    # the same worker now misses at 5%: banned within two checks of its change, banked past or not
    checks = 0
    while not near_ties.banned_by_score(score, alpha=ALPHA):
        score = near_ties.score(score, 13, 256, honest_rate=P)
        checks += 1
    assert checks <= 2, checks
    # the whole-history test alone: after 2.56M honest tokens, 5% for 100 checks is still "plausible"
    assert not near_ties.implausible(4096 + 1300, 2_560_000 + 25_600, honest_rate=P, alpha=ALPHA)


def test_degenerate_counts_do_not_move_the_score():
    assert near_ties.score(3.0, 0, 0, honest_rate=P) == 3.0
    assert near_ties.score(0.0, 5, 3, honest_rate=P) == near_ties.score(0.0, 3, 3, honest_rate=P)  # ties <= positions
    assert near_ties.score(0.0, 0, 10, honest_rate=0.5) == 0.0   # 4 x 50% is no rate: no CUSUM


def test_a_worker_with_a_long_honest_record_that_changes_its_sampling_is_banned(make_swarm):
    from coordinator.store import workers

    s = make_swarm(near_ties={"honest_rate": P, "alpha": ALPHA})
    s.publish(0)
    w = s.new_worker()
    with s.ctx.db.write() as conn:    # a long honest past: 1M checked tokens, 0.16% of them near ties
        workers.update_fields(conn, w.peer_id, checked_positions=1_000_000, near_ties=1_600)
    judged = 0
    while s.snapshot_worker(w)["status"] != "banned" and judged < 50:
        (sid,) = s.submit_queued(w)
        assert s.verdict(sid, True, checks=passing_checks(positions=40, near_ties=2)).status_code == 200
        judged += 1
    row = s.snapshot_worker(w)
    assert row["status"] == "banned", row   # before: still active after 50 such checks
    assert judged <= 8 and "near-tie score" in row["ban_reason"], (judged, row["ban_reason"])
