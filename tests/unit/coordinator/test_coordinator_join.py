"""Joining: permissionless by default; allowlist, proof of work, identities per address and
rate limits when the operator turns them on."""

from protocol.identity import KeyPair
from protocol.messages import (
    KIND_HEARTBEAT,
    KIND_REGISTRATION,
    HardwareReport,
    Heartbeat,
    Registration,
    RunInfo,
)
from protocol.pow import pow_ok, solve_pow


def _register(s, key, pow_nonce=None):
    return s.post("/v1/workers/register", KIND_REGISTRATION,
                  Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1), pow_nonce=pow_nonce), key)


def test_anyone_can_join_and_the_worker_id_is_the_key_s_peer_id(swarm):
    key = KeyPair.generate()
    r = _register(swarm, key)
    assert r.status_code == 200
    assert r.json()["worker_id"] == key.peer_id and r.json()["check_rate"] is None
    again = _register(swarm, key)  # registering again (a restart) keeps the identity's record
    assert again.status_code == 200
    assert [w["worker_id"] for w in swarm.stats()["workers"]] == [key.peer_id]


def test_allowlist_admits_only_listed_keys(make_swarm):
    ok, other = KeyPair.generate(), KeyPair.generate()
    s = make_swarm(join={"allowlist": [ok.public.hex]})
    assert _register(s, ok).status_code == 200
    r = _register(s, other)
    assert r.status_code == 403 and "allowlist" in r.json()["detail"]
    assert len(s.stats()["workers"]) == 1


def test_proof_of_work_is_required_when_configured(make_swarm):
    s = make_swarm(join={"pow_difficulty": 10})
    run = RunInfo.model_validate(s.http.get("/v1/run").json())
    assert run.pow_difficulty == 10 and len(run.pow_challenge) == 32
    key = KeyPair.generate()
    r = _register(s, key)
    assert r.status_code == 403 and "proof of work" in r.json()["detail"]
    nonce = solve_pow(run.pow_challenge, key.public.hex, 10)
    assert _register(s, key, pow_nonce=nonce).status_code == 200
    # a nonce is bound to the key that did the work
    other = KeyPair.generate()
    while pow_ok(run.pow_challenge, other.public.hex, nonce, 10):  # 1 chance in 1024
        other = KeyPair.generate()
    assert _register(s, other, pow_nonce=nonce).status_code == 403


def test_pow_challenge_survives_a_restart(make_swarm, tmp_path, tiny_model):
    s = make_swarm(join={"pow_difficulty": 4})
    first = s.http.get("/v1/run").json()["pow_challenge"]
    s.close()
    from coord_harness import start_swarm

    again = start_swarm(tmp_path / "s0", tiny_model, join={"pow_difficulty": 4})
    try:
        assert again.http.get("/v1/run").json()["pow_challenge"] == first
    finally:
        again.close()


def test_one_active_identity_per_address(make_swarm):
    s = make_swarm(limits={"exempt_addresses": [], "burst": 1000}, join={"identities_per_address": 1})
    a, b = KeyPair.generate(), KeyPair.generate()
    assert _register(s, a).status_code == 200
    r = _register(s, b)
    assert r.status_code == 429 and "127.0.0.1" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    assert _register(s, a).status_code == 200  # the same identity may re-register
    # once the first identity has gone silent, the address may bring another one
    j = s.cfg.join
    s.clock.advance(j.heartbeat_interval_s * (j.missed_heartbeats_gone + 1))
    from coordinator.service import upkeep

    upkeep.sweep(s.ctx)
    assert _register(s, b).status_code == 200


def test_no_address_is_exempt_by_default_and_a_local_swarm_lists_loopback(swarm):
    from coordinator.config import LimitsConfig

    assert LimitsConfig().exempt_addresses == [] and LimitsConfig().trusted_proxies == []
    assert swarm.cfg.join.identities_per_address == 1 and "127.0.0.1" in swarm.cfg.limits.exempt_addresses
    for _ in range(3):
        assert _register(swarm, KeyPair.generate()).status_code == 200


def test_rate_limit_per_identity_answers_429_with_retry_after(make_swarm):
    s = make_swarm(limits={"requests_per_s_per_worker": 1.0, "burst": 3})
    key = KeyPair.generate()
    assert _register(s, key).status_code == 200
    codes = [s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), key).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), key)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert _register(s, other := KeyPair.generate()).status_code == 200  # another identity is not affected
    s.clock.advance(1.0)
    assert s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), key).status_code == 200
    assert s.metric("swarmrl_coordinator_rejections_total", reason="rate_limited_identity") == 2
    assert other


def test_rate_limit_per_address(make_swarm):
    s = make_swarm(limits={"requests_per_s_per_address": 1.0, "burst": 2, "exempt_addresses": []},
                   join={"identities_per_address": 0})
    codes = [s.http.get("/v1/run").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    s.clock.advance(2.0)
    assert s.http.get("/v1/run").status_code == 200


def test_trusted_keys_are_not_rate_limited_per_identity(make_swarm):
    s = make_swarm(limits={"requests_per_s_per_worker": 1.0, "burst": 1})
    s.publish(0)
    for _ in range(5):
        assert s.batch().status_code == 200
        s.claim()


def test_a_restarted_coordinator_does_not_count_its_own_downtime_as_worker_silence(swarm):
    from coordinator.service import upkeep

    key = KeyPair.generate()
    assert _register(swarm, key).status_code == 200
    j = swarm.cfg.join
    silence = j.heartbeat_interval_s * j.missed_heartbeats_gone
    # The coordinator was down for longer than the silence limit and has just come back:
    swarm.clock.advance(silence * 3)
    swarm.ctx.started_at = swarm.clock()
    upkeep.sweep(swarm.ctx)
    assert [w["status"] for w in swarm.stats()["workers"]] == ["active"]
    # A worker that stays silent after the restart is gone once the limit has passed again.
    swarm.clock.advance(silence + 1)
    upkeep.sweep(swarm.ctx)
    assert [w["status"] for w in swarm.stats()["workers"]] == ["gone"]
