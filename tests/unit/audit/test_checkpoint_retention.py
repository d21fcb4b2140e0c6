"""Checkpoints kept for re-verification: the retention rule and the keeper's passes.

The keeper runs against a real coordinator database (coord_harness); its shardcast client is
replaced by one that makes a folder the way `ShardcastClient.fetch` does (the real client is
exercised in tests/integration/test_audit_checkpoints.py).
"""

import json
import logging

import pytest

from coordinator.checkpoints import CheckpointKeeper, retained
from protocol.archive import checkpoint_dir, checkpoint_versions
from shardcast.errors import VersionUnavailable
from tests.unit.coordinator.coord_harness import start_swarm


@pytest.mark.parametrize("keep_last,keep_every,pinned,expected", [
    (0, 0, set(), {0, 1, 2, 3, 4, 5, 6}),            # 0 = keep every version
    (2, 0, set(), {5, 6}),
    (2, 3, set(), {0, 3, 5, 6}),                     # every 3rd version, for spot audits
    (1, 0, {2, 9}, {2, 6}),                          # pinned versions stay (9 was never announced)
    (10, 0, set(), {0, 1, 2, 3, 4, 5, 6}),
])
def test_retention_rule(keep_last, keep_every, pinned, expected):
    assert retained(list(range(7)), keep_last=keep_last, keep_every=keep_every, pinned=pinned) == expected


class FolderClient:
    """Stands in for ShardcastClient: fetch(v) -> cache/<v> holding the checkpoint and its manifest."""

    def __init__(self, cache, missing=(), serves_from=None):
        self.cache, self.missing, self.fetched, self.asked = cache, set(missing), [], []
        self.serves_from = serves_from  # a relay's retention: versions below this are pruned

    def fetch(self, version):
        self.asked.append(version)
        if version in self.missing or (self.serves_from is not None and version < self.serves_from):
            raise VersionUnavailable(f"no source holds version {version}")
        d = self.cache / str(version)
        d.mkdir(parents=True)
        (d / ".manifest.json").write_text(json.dumps({"version": version}))
        (d / "model.safetensors").write_bytes(b"w" * version)
        self.fetched.append(version)
        return d


@pytest.fixture
def coordinator(tmp_path, audit_model):
    made = []

    def make(**checkpoints):
        s = start_swarm(tmp_path / f"c{len(made)}", audit_model, async_window=1, checkpoints=checkpoints)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


def submit_at(s, key, version, accepted):
    lease = s.lease(key, 1)[0]
    r = s.submit(key, lease, version=version)
    assert r.status_code == 200, r.text
    sid = r.json()["submission_id"]
    if accepted is not None:
        claimed = {j.submission_id for j in s.claim()}
        assert sid in claimed
        assert s.verdict(sid, accepted).status_code == 200
    return sid


def test_keeper_keeps_what_rules_and_live_state_need(coordinator, tmp_path):
    s = coordinator(keep_last=1, keep_rejected=True)
    root = tmp_path / "archive"
    client = FolderClient(tmp_path / "cache")
    keeper = CheckpointKeeper(s.ctx, root, client=client)
    honest, cheater = s.new_worker(), s.new_worker()
    assert s.publish(0).status_code == 200
    submit_at(s, cheater, 0, accepted=False)       # v0 is evidence behind a ban
    assert s.publish(1).status_code == 200
    assert s.publish(2).status_code == 200
    submit_at(s, honest, 1, accepted=True)         # leased while v1 was in the window
    assert s.publish(3).status_code == 200
    assert s.publish(4).status_code == 200
    queued = submit_at(s, honest, 3, accepted=None)  # v3: still to be judged
    assert s.publish(5).status_code == 200
    out = keeper.step()
    # newest (5) + rejected (0) + queued (3) + async window floor 5-1=4 -> {0, 3, 4, 5}
    assert out == {"fetched": [5, 4, 3, 0], "pruned": []}  # newest first
    assert checkpoint_versions(root) == [0, 3, 4, 5]
    assert (checkpoint_dir(root, 3) / "model.safetensors").read_bytes() == b"www"
    # v3's submission is judged: nothing pins v3 any more, so it goes; v0 stays (the ban's evidence)
    assert s.verdict(queued, True).status_code == 200
    assert s.publish(6).status_code == 200
    out = keeper.step()
    assert out["fetched"] == [6] and out["pruned"] == [3, 4]
    assert checkpoint_versions(root) == [0, 5, 6]
    assert not any(p.name.startswith(".v") for p in (root / "checkpoints").iterdir())  # no half-deleted folder
    assert keeper.step() == {"fetched": [], "pruned": []}                                # idempotent


def test_a_version_no_relay_serves_is_retried_then_given_up(coordinator, tmp_path, caplog):
    s = coordinator(keep_last=0)  # keep every version
    client = FolderClient(tmp_path / "cache", missing={1, 2})
    now = [0.0]
    keeper = CheckpointKeeper(s.ctx, tmp_path / "archive", client=client, give_up_after_s=60.0,
                              clock=lambda: now[0])
    for v in range(4):
        assert s.publish(v).status_code == 200
    with caplog.at_level(logging.WARNING, logger="swarmrl.coordinator"):
        assert keeper.step()["fetched"] == [3, 0]
        now[0] = 30.0
        client.missing.discard(2)          # a relay outage ends: version 2 is served again
        assert keeper.step()["fetched"] == [2]
        now[0] = 61.0                      # version 1 never comes back (pruned upstream)
        assert keeper.step()["fetched"] == []
        now[0] = 600.0
        assert keeper.step()["fetched"] == []
    assert client.fetched == [3, 0, 2] and keeper.unavailable == {1}
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("no relay serves version 1 now" in m for m in msgs) == 1
    gave_up = [m for m in msgs if "giving up on version 1" in m]
    assert len(gave_up) == 1 and "cannot be re-verified" in gave_up[0]


def test_a_keeper_that_fell_behind_takes_the_newest_first_and_does_not_stall_on_pruned_ones(coordinator, tmp_path):
    """A run publishing faster than the keeper polls, relays keeping their last 3 versions:
    the newest are archived at once, each pruned one is asked at most a few times a pass and
    then only after its back-off, so the next new version is still archived on the next pass."""
    s = coordinator(keep_last=0)  # the rule wants every version: only the relays' retention limits it
    client = FolderClient(tmp_path / "cache", serves_from=7)
    now = [0.0]
    keeper = CheckpointKeeper(s.ctx, tmp_path / "archive", client=client, give_up_after_s=600.0,
                              clock=lambda: now[0])
    for v in range(10):
        assert s.publish(v).status_code == 200
    assert keeper.step()["fetched"] == [9, 8, 7]
    assert client.asked == [9, 8, 7, 6, 5, 4]            # three misses end the pass
    client.asked.clear()
    assert s.publish(10).status_code == 200
    client.serves_from = 8
    now[0] = 1.0                                          # misses 6, 5, 4 wait out their back-off
    assert keeper.step()["fetched"] == [10]
    assert client.asked == [10, 3, 2, 1]
    client.asked.clear()
    now[0] = 2.5                                          # 6, 5, 4 are due again (2 s), 3..1 not yet
    assert keeper.step()["fetched"] == []
    assert client.asked == [6, 5, 4]
    client.asked.clear()
    now[0] = 3.5                                          # 3, 2, 1 due; 0 never asked yet
    keeper.step()
    assert client.asked == [3, 2, 1]
    client.asked.clear()
    now[0] = 4.0
    keeper.step()
    assert client.asked == [0]                            # 6..1 back off for 4 s now, 0 gets its first try


@pytest.mark.parametrize("rejected,kept,max_versions,max_bytes,evidence,left_out", [
    ({1, 2, 3, 4}, set(), 2, 10**9, {3, 4}, [1, 2]),         # the oldest go first
    ({1, 2, 3, 4}, {2, 3}, 2, 10**9, {1, 4}, []),            # kept by other rules: free of charge
    ({1, 2, 3, 4}, set(), 9, 25, {3, 4}, [1, 2]),            # 10 bytes each: two fit in 25
    ({1, 2, 3}, set(), 0, 10**9, set(), [1, 2, 3]),          # 0: no evidence kept at all
])
def test_evidence_budget_rule(rejected, kept, max_versions, max_bytes, evidence, left_out):
    from coordinator.checkpoints import rejected_within_budget

    sizes = {v: 10 for v in range(10)}
    assert rejected_within_budget(rejected, kept, sizes, max_versions=max_versions, max_bytes=max_bytes) == \
        (evidence, left_out)


@pytest.mark.parametrize("budget", [{"rejected_max_versions": 3}, "bytes"])
def test_a_spammer_rejected_once_per_version_cannot_pin_more_than_the_budget(coordinator, tmp_path, caplog, budget,
                                                                               audit_model):
    """Issue 18 item 5: one garbage submission per version from a throw-away identity, each
    rejected. Without a budget every version stayed archived; with one, the archive holds the
    versions the other rules keep plus at most the budget of evidence, the newest, and says so."""
    from protocol.manifest import build_manifest

    if budget == "bytes":
        size = build_manifest(audit_model, run_id="x", version=0, step=0).total_bytes  # each version's bytes
        budget = {"rejected_max_versions": 100, "rejected_max_bytes": int(3.5 * size)}
    s = coordinator(keep_last=2, keep_every=0, keep_rejected=True, **budget)
    root = tmp_path / "archive"
    keeper = CheckpointKeeper(s.ctx, root, client=FolderClient(tmp_path / "cache"))
    versions = 12
    with caplog.at_level(logging.WARNING, logger="swarmrl.coordinator"):
        for v in range(versions):
            assert s.publish(v).status_code == 200
            submit_at(s, s.new_worker(), v, accepted=False)  # a fresh identity, banned at once
            keeper.step()
            evidence_only = set(checkpoint_versions(root)) - {v, v - 1}  # beyond keep_last=2 / the window
            assert len(evidence_only) <= 3, checkpoint_versions(root)
    assert checkpoint_versions(root) == [7, 8, 9, 10, 11]     # newest two + the newest three rejected-claimed
    assert s.metric("swarmrl_coordinator_archive_evidence_over_budget_total") == versions - 5
    warned = [r.getMessage() for r in caplog.records if "exceed the evidence budget" in r.getMessage()]
    assert warned and "not keeping the oldest" in warned[0]


def test_the_evidence_spammer_fixture_meets_the_budget(tmp_path, audit_model):
    """tests/hostile/evidence.EvidenceSpammer against a real coordinator: a fresh identity per
    version, each queued at intake and rejected by the verifier (the test), and still the
    archive keeps no more than the budget of evidence."""
    import time

    from tests.hostile.evidence import EvidenceSpammer

    s = start_swarm(tmp_path / "c", audit_model, async_window=1, join={"identities_per_address": 0},
                    checkpoints={"keep_last": 1, "keep_every": 0, "rejected_max_versions": 2})
    s.clock.t = time.time()  # the spammer signs with the real clock
    root = tmp_path / "archive"
    keeper = CheckpointKeeper(s.ctx, root, client=FolderClient(tmp_path / "cache"))
    try:
        with EvidenceSpammer(s.server.url, hidden_size=32, poll_s=0.05) as spam:
            for v in range(6):
                assert s.publish(v).status_code == 200
                assert spam.wait_for(v + 1, timeout_s=30), spam.errors
                for job in s.claim():
                    assert s.verdict(job.submission_id, False, reason="proof: garbage").status_code == 200
                keeper.step()
        assert [status for _, _, status in spam.spammed] == [200] * 6
        assert len({peer for _, peer, _ in spam.spammed}) == 6           # a throw-away identity each
        assert checkpoint_versions(root) == [2, 3, 4, 5]                   # newest and window (4, 5), + 2 of evidence
    finally:
        s.close()
