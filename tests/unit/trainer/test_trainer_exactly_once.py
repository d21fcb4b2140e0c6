"""Every verified group is trained exactly once: through a lost batch answer, a lost
acknowledgement, a trainer restart and a crash between a saved version and its inbox clean-up.

A real coordinator on 127.0.0.1 (tests.unit.coordinator.coord_harness: real HTTP, real SQLite,
a clock the test moves) hands out the groups; a real `TrainerLoop` takes them through the real
`CoordinatorLink`, spools them in its real `Inbox`, saves real checkpoints with
`CheckpointStore` and announces each version to the coordinator. Only the GRPO step itself is
a recorder (which groups each step trained), and the network faults are injected in the link:
an answer that never reaches the trainer, an acknowledgement that never reaches the coordinator.
"""

from __future__ import annotations

from collections import Counter

import pytest

from coordinator.store import leases as lease_store
from trainer.checkpoint import CheckpointStore, Inbox
from trainer.client import CoordinatorLink
from trainer.config import EvalConfig, TrainerConfig
from trainer.history import WeightHistory
from trainer.loop import TrainerLoop
from trainer.status import PhaseClock, StatusBoard, TrainerMetrics
from trainer.step import StepResult
from protocol.lm import load_tokenizer
from protocol.manifest import build_manifest, sign_manifest
from protocol.messages import BatchResponse, Completion
from tests.unit.coordinator.coord_harness import proof_for, start_swarm

ACK_TIMEOUT_S = 5.0


class FaultyLink(CoordinatorLink):
    """The real link, with scripted network faults: the next `drop_answers` batch answers are
    lost after the coordinator sent them, and acknowledgements are lost while `lose_acks`."""

    drop_answers = 0
    lose_acks = False
    dropped: list[str]

    def take_batch(self, max_groups: int, min_version: int, wait_s: float) -> BatchResponse:
        resp = super().take_batch(max_groups, min_version, wait_s)
        if self.drop_answers and resp.groups:
            self.drop_answers -= 1
            self.dropped += [g.submission_id for g in resp.groups]
            return BatchResponse(groups=[])
        return resp

    def ack(self, submission_ids: list[str], unused: dict[str, str] | None = None) -> int:
        return 0 if self.lose_acks else super().ack(submission_ids, unused)


class Origin:
    """Publishes a saved version as a signed manifest of its folder, once per version (what the
    shardcast origin returns; a restarted trainer re-announces the same manifest)."""

    published: dict = {}

    def __init__(self, operator, run_id: str):
        self.operator, self.run_id = operator, run_id

    def publish(self, model_dir, version: int, step: int):
        key = (self.run_id, str(model_dir), version)
        if key not in self.published:
            self.published[key] = sign_manifest(build_manifest(model_dir, run_id=self.run_id, version=version,
                                                               step=step), self.operator)
        return self.published[key]


@pytest.fixture
def coordinator(tmp_path, tiny_model_dir):
    s = start_swarm(tmp_path / "coord", tiny_model_dir, batch_ack_timeout_s=ACK_TIMEOUT_S, async_window=4)
    s.clock.t = __import__("time").time()  # the trainer signs with the real clock
    try:
        yield s
    finally:
        s.close()


def _loop(s, data_dir, tiny_model, tiny_model_dir, trained: list[list[str]], max_versions: int,
          max_staleness: int = 0) -> TrainerLoop:
    cfg = TrainerConfig(run_id=s.cfg.run_id, model=str(tiny_model_dir), data_dir=data_dir, groups_per_step=2,
                        async_window=s.cfg.async_window, max_staleness=max_staleness, batch_wait_s=0.0,
                        max_versions=max_versions, eval=EvalConfig(every_versions=0, at_start=False))
    store = CheckpointStore(data_dir, keep=6)
    tok = load_tokenizer(str(tiny_model_dir))
    if not store.complete_versions():
        store.save(0, model=tiny_model, tokenizer=tok, optimizer_state=None, state={"step": 0})
    latest = store.latest()
    link = FaultyLink(s.server.url, s.operator, run_id=s.cfg.run_id)
    link.dropped = []

    def step_fn(groups):
        trained.append([g.submission_id for g, _ in groups])
        return StepResult(version=0, groups=len(groups), sequences=0, tokens=0, padded_tokens=0, real_tokens=0,
                          micro_batches=0, grad_norm=0.0, stale_tokens=0, missing_behaviour_tokens=0, seconds=0.0)

    def save_fn(v, step, extra):
        return store.save(v, model=tiny_model, tokenizer=tok, optimizer_state=None, state={**extra, "step": step})

    return TrainerLoop(cfg, model=tiny_model, tokenizer=tok, store=store, inbox=Inbox(data_dir), link=link,
                       origin=Origin(s.operator, s.cfg.run_id), history=WeightHistory(tiny_model, keep=0),
                       version=latest.version, step=latest.state()["step"], step_fn=step_fn, save_fn=save_fn,
                       source=None, clock=PhaseClock(), metrics=TrainerMetrics(), board=StatusBoard(),
                       should_stop=lambda: False)


def _accepted_groups(s, n: int, version: int = 0, signal: bool = True) -> list[str]:
    """`n` verified groups of policy `version` whose completions differ in reward (so none is
    dropped for zero advantage; `signal=False`: every completion is wrong, zero advantage)."""
    w = s.new_worker()
    sids = []
    for lease in s.lease(w, n):
        with s.ctx.db.read() as conn:
            index = lease_store.get(conn, lease.lease_id).task_index
        answer = s.ctx.tasks.tokenizer(s.ctx.tasks.task(index).answer, add_special_tokens=False)["input_ids"]
        comps = []
        for i in range(len(lease.seeds)):
            toks = (answer if i == 0 and signal else [5, 6 + i]) + [lease.eos_token_id]
            comps.append(Completion(token_ids=toks, finish_reason="eos", proof=proof_for(len(toks))))
        r = s.submit(w, lease, completions=comps, version=version)
        assert r.status_code == 200, r.text
        sids.append(r.json()["submission_id"])
    s.claim()
    for sid in sids:
        assert s.verdict(sid, True).status_code == 200
    return sids


def test_groups_lost_on_the_way_come_back_and_every_group_is_trained_exactly_once(coordinator, tmp_path, tiny_model,
                                                                                  tiny_model_dir):
    s = coordinator
    trained: list[list[str]] = []
    data = tmp_path / "trainer"
    first = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=1)
    first.announce()                                   # version 0 is current: leases can be issued
    groups = _accepted_groups(s, 4)

    # 1. the first answer is lost (the coordinator handed two groups out; the trainer never saw
    #    them), and the acknowledgement of the next two never arrives
    first.link.drop_answers = 1
    first.link.lose_acks = True
    first.run()                                        # trains one step on the two it did see
    assert first.version == 1 and len(trained) == 1
    lost, seen = first.link.dropped, trained[0]
    assert sorted(lost + seen) == sorted(groups)
    assert {s.snapshot_submission(g)["buffer"] for g in groups} == {"handed"}
    assert BatchResponse.model_validate_json(s.batch().content).groups == []  # none takeable before the timeout

    # 2. the trainer restarts after the coordinator's ack timeout; two more groups are verified
    s.clock.advance(ACK_TIMEOUT_S + 1)
    more = _accepted_groups(s, 2)
    second = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=3)
    assert set(second.trained) == set(seen)            # what version 1 trained, read back from its state.json
    second.run()
    # the lost two come back and are trained; the two whose ack was lost come back too and are
    # recognised (acknowledged, not trained); then the new two (all of version 0: within one
    # version, batches come in the order of acceptance)
    assert second.version == 3 and [sorted(t) for t in trained[1:]] == [sorted(lost), sorted(more)]
    counts = Counter(g for step in trained for g in step)
    assert sorted(counts) == sorted(groups + more) and set(counts.values()) == {1}
    assert second.metrics.registry.get_sample_value("swarmrl_trainer_groups_total", {"outcome": "duplicate"}) == 2
    # every group is acknowledged now: consumed for good, and nothing is handed out again
    assert {s.snapshot_submission(g)["buffer"] for g in groups + more} == {"consumed"}
    s.clock.advance(ACK_TIMEOUT_S + 1)
    assert BatchResponse.model_validate_json(s.batch().content).groups == []
    assert list(second.inbox.root.glob("*.json")) == []


def test_a_group_left_in_the_inbox_by_a_crash_after_its_version_was_saved_is_not_trained_again(
        coordinator, tmp_path, tiny_model, tiny_model_dir):
    s = coordinator
    trained: list[list[str]] = []
    data = tmp_path / "trainer"
    first = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=1)
    first.announce()
    groups = _accepted_groups(s, 2)
    received = BatchResponse.model_validate_json(s.batch().content).groups  # (taken here to spool them below)
    assert sorted(g.submission_id for g in received) == sorted(groups)
    s.ack(groups)
    first.inbox.put(received)
    first.run()                                        # trains both from the inbox, saves version 1 ...
    assert sorted(trained[0]) == sorted(groups)
    first.inbox.put(received)                          # ... and "crashes" before removing them from the inbox
    second = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=2)
    more = _accepted_groups(s, 2)
    second.run()
    assert len(trained) == 2 and sorted(trained[1]) == sorted(more)
    assert list(second.inbox.root.glob("*.json")) == []


def test_late_groups_within_the_staleness_limit_are_trained_and_unused_ones_are_reported(
        tmp_path, tiny_model, tiny_model_dir):
    """Issue 23. Async window 1, trainer staleness limit 3: two groups of version 0 accepted while
    version 1 is current (at the floor: their last chance first) and two of version 1 are both
    trained; before issue 23 the version-0 ones were dropped as stale once version 2 came and
    this run never finished. A zero-advantage group is acknowledged as unused, and the
    coordinator's waste report counts it and nothing stale."""
    s = start_swarm(tmp_path / "coord", tiny_model_dir, batch_ack_timeout_s=ACK_TIMEOUT_S, async_window=1,
                    lease_sizing={"enabled": False})  # this test leases by hand, ahead of the trainer
    s.clock.t = __import__("time").time()
    try:
        trained: list[list[str]] = []
        data = tmp_path / "trainer"
        first = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=1, max_staleness=3)
        first.announce()
        early = _accepted_groups(s, 2)
        (flat,) = _accepted_groups(s, 1, signal=False)
        first.run()
        assert first.version == 1 and sorted(trained[0]) == sorted(early)
        late = _accepted_groups(s, 2, version=0)       # leased at version 1, made with version 0
        fresh = _accepted_groups(s, 2, version=1)
        second = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=3, max_staleness=3)
        second.run()
        assert [sorted(t) for t in trained[1:]] == [sorted(late), sorted(fresh)]
        waste = s.stats()["waste"]
        assert (waste["accepted"], waste["taken"]) == (7, 6)
        assert {k: c["groups"] for k, c in waste["causes"].items() if c["groups"]} == {"zero_advantage": 1}
        assert s.snapshot_submission(flat)["buffer"] == "consumed" and waste["stale_share"] == 0.0
    finally:
        s.close()


class Killed(BaseException):
    """The trainer process dying (SIGKILL) at this point."""


def test_a_group_that_fell_out_of_the_window_in_the_inbox_is_reported_unused_even_if_the_trainer_dies_first(
        tmp_path, tiny_model, tiny_model_dir):
    """Found reading the trainer for test_swarm_chaos.py's accounting invariant: an acknowledged group the
    trainer drops as stale (here: spooled in its inbox, below the window after a restart) was
    removed from the inbox before the coordinator was told why; a trainer killed in between left
    it `consumed` at the coordinator with no cause and nowhere to be trained: silently gone. The
    inbox must keep it until the coordinator has the reason, so the next life reports it."""
    s = start_swarm(tmp_path / "coord", tiny_model_dir, batch_ack_timeout_s=ACK_TIMEOUT_S, async_window=1,
                    lease_sizing={"enabled": False})
    s.clock.t = __import__("time").time()
    try:
        trained: list[list[str]] = []
        data = tmp_path / "trainer"
        first = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=1)
        first.announce()
        groups = _accepted_groups(s, 2)
        received = BatchResponse.model_validate_json(s.batch().content).groups
        first.inbox.put(received)                      # spooled and acknowledged, then the trainer moved on
        s.ack(groups)
        for v in (1, 2, 3):                            # versions trained on other groups
            first.store.save(v, model=tiny_model, tokenizer=first.tokenizer, optimizer_state=None,
                             state={"step": v, "trained": []})
        second = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=3)
        assert second.window_floor() > 0              # the spooled groups (version 0) are below the window

        def killed(*a, **kw):
            raise Killed()

        second.link.ack = killed                        # dies before the coordinator hears why
        with pytest.raises(Killed):
            second.run()
        third = _loop(s, data, tiny_model, tiny_model_dir, trained, max_versions=3)
        third.run()
        assert trained == []
        assert {s.snapshot_submission(g)["unused"] for g in groups} == {"trainer_stale"}
        assert list(third.inbox.root.glob("*.json")) == []
    finally:
        s.close()
