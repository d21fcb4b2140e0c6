"""A worker's standing over real HTTP: groups accepted without a full check wait for the
worker's next clean full check (a ban drops them), the proof-drift test, verdicts that cannot
be trusted as passes, banned identities counting against their address, the proof-of-work
challenge per epoch, and dropped leases raising the check rate."""

import pytest

from protocol.messages import (
    KIND_LEASE_RELEASE,
    KIND_REGISTRATION,
    BatchResponse,
    CheckResult,
    HardwareReport,
    LeaseRelease,
    Registration,
)
from protocol.pow import solve_pow
from tests.verdict_fixtures import passing_checks

CHEAP = {"initial": 0.0, "floor": 0.0, "halve_every": 1}  # nothing drawn for a full check at intake


def groups(s) -> list[str]:
    return [g.submission_id for g in BatchResponse.model_validate_json(s.batch().content).groups]


def submit(s, w, n=1) -> list[str]:
    return s.submit_queued(w, n)


def test_groups_accepted_without_a_full_check_wait_for_the_next_clean_one(make_swarm):
    s = make_swarm(check_rate=CHEAP)
    s.publish(0)
    w = s.new_worker()
    cheap = submit(s, w, 3)
    for sid in cheap:
        assert s.verdict(sid, True, full_check=False).status_code == 200
    assert {s.snapshot_submission(sid)["buffer"] for sid in cheap} == {"held"}
    assert groups(s) == []                      # nothing trainable yet
    (checked,) = submit(s, w)
    assert s.verdict(checked, True, full_check=True).status_code == 200
    assert sorted(groups(s)) == sorted(cheap + [checked])
    # a later cheap acceptance waits again
    (later,) = submit(s, w)
    s.verdict(later, True, full_check=False)
    assert s.snapshot_submission(later)["buffer"] == "held" and groups(s) == []


def test_a_cheap_verdict_that_arrives_after_a_later_clean_check_goes_straight_to_the_buffer(make_swarm):
    s = make_swarm(check_rate=CHEAP)
    s.publish(0)
    w = s.new_worker()
    first, second = submit(s, w, 2)
    assert s.verdict(second, True, full_check=True).status_code == 200   # verifiers may answer out of order
    assert s.verdict(first, True, full_check=False).status_code == 200
    assert sorted(groups(s)) == sorted([first, second])


def held(s, n: int):
    """A new worker whose `n` groups were accepted without a full check (held), and their ids."""
    s.publish(0)
    w = s.new_worker()
    cheap = submit(s, w, n)
    for sid in cheap:
        s.verdict(sid, True, full_check=False)
    return w, cheap


def test_a_ban_drops_every_held_group_so_none_of_a_turned_cheaters_work_is_trained(make_swarm):
    s = make_swarm(check_rate=CHEAP)
    w, cheap = held(s, 5)
    (caught,) = submit(s, w)
    assert s.verdict(caught, False, full_check=True, reason="proof: completion 0: ...").status_code == 200
    assert s.snapshot_worker(w)["status"] == "banned"
    assert {s.snapshot_submission(sid)["buffer"] for sid in cheap} == {"dropped"}
    assert groups(s) == []
    waste = s.stats()["waste"]                  # issue 23: counted as waste, cause "ban"
    assert waste["causes"]["ban"]["groups"] == 5 and waste["taken"] == 0


def test_held_groups_that_go_stale_are_waste_of_their_own_cause(make_swarm):
    """Issue 23: a group held for its worker's next clean check that falls below the buffer's
    floor first is counted as stale_held, apart from the stale groups that were ready."""
    s = make_swarm(check_rate=CHEAP)
    _, waiting = held(s, 2)
    for v in range(1, s.cfg.async_window + 2):
        assert s.publish(v).status_code == 200
    assert groups(s) == []
    assert {s.snapshot_submission(sid)["buffer"] for sid in waiting} == {"stale"}
    causes = s.stats()["waste"]["causes"]
    assert causes["stale_held"]["groups"] == 2 and causes["stale"]["groups"] == 0
    assert s.metric("swarmrl_coordinator_groups_unused_total", cause="stale_held") == 2


def test_holding_can_be_switched_off(make_swarm):
    s = make_swarm(check_rate=CHEAP, standing={"hold_until_checked": False})
    s.publish(0)
    w = s.new_worker()
    (sid,) = submit(s, w)
    s.verdict(sid, True, full_check=False)
    assert groups(s) == [sid]


def test_proof_drift_bans_a_worker_whose_proofs_stay_a_little_off(make_swarm):
    """Every verdict passes, but one worker's proofs sit at 0.06 mantissa steps (fp32 allowance
    0.01, limit 0.2: +0.25 per check, banned at the 4th) while another's stay at honest noise."""
    s = make_swarm()
    s.publish(0)
    cheat, honest = s.new_worker(), s.new_worker()
    judged = 0
    for _ in range(10):
        if s.snapshot_worker(cheat)["status"] == "banned":
            break
        (sid,) = submit(s, cheat)
        assert s.verdict(sid, True, checks=passing_checks(mant_mean=0.06)).status_code == 200
        judged += 1
    worker = s.worker_info(cheat)
    assert worker["status"] == "banned" and "drift" in worker["ban_reason"] and judged == 4
    for _ in range(40):
        (sid,) = submit(s, honest)
        s.verdict(sid, True, checks=passing_checks(mant_mean=0.004))
    assert s.snapshot_worker(honest)["status"] == "active" and s.snapshot_worker(honest)["drift_score"] == 0
    # bf16 has its own, wider allowance: 0.65 steps is honest there (vLLM's own kernels measured
    # 0.61 on average against the verifier's transformers prefill)
    for _ in range(40):
        (sid,) = submit(s, honest)
        s.verdict(sid, True, checks=passing_checks(dtype="bfloat16", mant_mean=0.65))
    assert s.snapshot_worker(honest)["status"] == "active"


@pytest.mark.parametrize("checks,why", [
    ([CheckResult(name="proof", passed=False, stats={}), CheckResult(name="sampling", passed=True, stats={})],
     "failed checks"),
    ([CheckResult(name="sampling", passed=True, stats={"positions": 3, "not_argmax": 0})], "without the proof"),
    ([CheckResult(name="proof", passed=True, stats={"group_mant_mean": None, "group_exp_frac": 0.0}),
      CheckResult(name="sampling", passed=True, stats={"positions": 3, "not_argmax": 0})], "non-finite"),
])
def test_an_acceptance_that_cannot_be_trusted_is_refused_and_changes_nothing(swarm, checks, why):
    swarm.publish(0)
    w = swarm.new_worker()
    (sid,) = submit(swarm, w)
    before = swarm.snapshot()
    r = swarm.verdict(sid, True, checks=checks)
    assert r.status_code == 422 and why in r.json()["detail"]
    assert swarm.snapshot() == before and swarm.snapshot_submission(sid)["status"] == "queued"


def register(s, key, challenge=None, difficulty=0):
    nonce = solve_pow(challenge, key.public.hex, difficulty) if difficulty else None
    return s.post("/v1/workers/register", KIND_REGISTRATION,
                  Registration(hardware=HardwareReport(cpu_count=2, ram_bytes=1 << 30), pow_nonce=nonce), key)


def test_a_banned_identity_counts_against_its_address_for_a_cooldown(make_swarm):
    from protocol.identity import KeyPair

    s = make_swarm(join={"identities_per_address": 1, "ban_cooldown_s": 600}, limits={"exempt_addresses": []})
    s.publish(0)
    first = s.new_worker()
    (sid,) = submit(s, first)
    s.verdict(sid, False, reason="proof: ...")
    newcomer = KeyPair.generate()
    r = register(s, newcomer)
    assert r.status_code == 429 and "banned" in r.json()["detail"]
    s.clock.advance(601)
    assert register(s, newcomer).status_code == 200


def test_the_proof_of_work_challenge_changes_per_epoch(make_swarm):
    from protocol.identity import KeyPair

    from protocol.pow import pow_ok

    s = make_swarm(join={"pow_difficulty": 8, "pow_epoch_s": 100})
    old = s.http.get("/v1/run").json()["pow_challenge"]
    a = KeyPair.generate()
    s.clock.advance(100)   # the next epoch: a solution of the previous one still counts
    mid = s.http.get("/v1/run").json()["pow_challenge"]
    assert register(s, a, old, 8).status_code == 200
    s.clock.advance(100)   # two epochs on: it no longer does
    new = s.http.get("/v1/run").json()["pow_challenge"]
    # a key whose solution of the old challenge does not happen to pass the two the coordinator
    # takes now (at difficulty 8, 1 key in ~128 does: the test failed on such a key once in CI)
    b = next(k for k in iter(KeyPair.generate, None)
             if not any(pow_ok(c, k.public.hex, solve_pow(old, k.public.hex, 8), 8) for c in (mid, new)))
    assert register(s, b, old, 8).status_code == 403
    assert len({old, mid, new}) == 3 and register(s, b, new, 8).status_code == 200


def test_dropping_leases_beyond_the_allowance_raises_the_check_rate(make_swarm):
    s = make_swarm(check_rate={"initial": 1.0, "floor": 0.01, "halve_every": 1},
                   standing={"drop_share": 0.0, "drop_slack": 2})
    s.publish(0)
    w = s.new_worker()
    for _ in range(6):
        (sid,) = submit(s, w)
        s.verdict(sid, True)
    rate = lambda: s.worker_info(w)["check_rate"]  # noqa: E731  (the operator's view)
    assert rate() == pytest.approx(1 / 64)
    leases = s.lease(w, 2)
    s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[x.lease_id for x in leases]), w)
    assert rate() == pytest.approx(1 / 64)   # within the slack
    leases = s.lease(w, 3)
    s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[x.lease_id for x in leases]), w)
    assert rate() == pytest.approx(1 / 8)    # 3 beyond it: 3 halvings undone
    s.lease(w, 4)
    s.clock.advance(s.cfg.lease_ttl_s + 1)   # letting leases expire counts the same
    from coordinator.service import upkeep

    upkeep.sweep(s.ctx)
    assert rate() == pytest.approx(1.0)


def test_one_bad_completion_per_group_is_caught_by_the_worst_completion_drift(make_swarm):
    """Pooled errors stay honest (one completion of 8 barely moves them), but the worst
    completion of every group sits at 4 steps in bf16 (allowance 2.5, limit 3): banned at the 2nd."""
    s = make_swarm()
    s.publish(0)
    w = s.new_worker()
    for n in range(1, 10):
        (sid,) = submit(s, w)
        s.verdict(sid, True, checks=passing_checks(dtype="bfloat16", mant_mean=0.4, per_completion=[0.3] * 7 + [4.0]))
        if s.snapshot_worker(w)["status"] == "banned":
            break
    assert n == 2 and "worst completions" in s.snapshot_worker(w)["ban_reason"]


def test_held_groups_are_not_on_their_way_to_the_trainer_for_the_lease_bound(make_swarm):
    """Issue 23 (`coordinator.rules.lease_size`): held groups wait for their worker's next
    submissions, so they must not use up the swarm's room for leases (a bench run's leases
    stopped for good when they did); ready ones and queued submissions do."""
    from coordinator.store import submissions

    s = make_swarm(check_rate=CHEAP)
    w, _ = held(s, 3)
    with s.ctx.db.read() as conn:
        assert submissions.on_their_way(conn, 0) == 0
    (checked,) = submit(s, w)
    with s.ctx.db.read() as conn:
        assert submissions.on_their_way(conn, 0) == 1            # queued for the verifier
    assert s.verdict(checked, True, full_check=True).status_code == 200
    with s.ctx.db.read() as conn:
        assert submissions.on_their_way(conn, 0) == 4            # the clean check released the held three
