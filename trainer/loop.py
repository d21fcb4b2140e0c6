"""The trainer's run loop: batches in, policy versions out.

    start:  newest complete checkpoint (or the initial model saved as version 0)
            -> publish it through the shardcast origin -> POST its manifest to /v1/policy
    loop:   spooled + new groups (POST /v1/trainer/batch, long-poll, from the staleness floor)
            -> spool them (fsync) -> filter (already trained, staleness limit, zero advantage,
            pass rate) -> acknowledge them (POST /v1/trainer/ack), naming the ones it will not
            train and why -> the freshest `groups_per_step` kept -> GRPO step -> save version n+1
            with the ids it trained (atomic, COMPLETE marker) -> publish -> announce -> forget
            the consumed groups -> evaluate every `eval.every_versions`

Staleness (issue 23): groups up to `cfg.staleness_limit` versions old are trained (the async
window's leases, plus `max_staleness` for work that arrives late; the step's decoupled
importance weights correct for the policy that made them). A step takes the pending groups in
their last version within the limit, then the freshest; older ones wait while they are within
the limit, and those that fall below it are
reported to the coordinator as stale (`BatchAck.unused`), like those the filter drops, so its
waste report (GET /v1/stats `waste`) counts every accepted group that never reached a step.

Every phase is timed (`PhaseClock`): "waiting" is the idle time that bench/learning.py reports.
A restart resumes from the newest complete version, keeps the numbering, re-announces that
version (idempotent at the origin and at the coordinator), acknowledges and trains on the
groups left in the inbox first. Exactly once: the coordinator hands a group out until it is
acknowledged (at least once), and `trained` (the ids the complete versions on disk trained,
see `CheckpointStore.trained`) keeps a group handed out twice, or left in the inbox by a crash
right after its version was saved, from being trained twice. In a torchrun world, rank 0 runs
this loop and drives the other ranks through `distributed.Team` (they only join steps and
checkpoint gathers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from protocol.messages import EvalReport, TrainingGroup
from protocol.tracking import NullTracker, Tracker
from protocol.window import window_floor
from trainer.checkpoint import CheckpointStore, Inbox
from trainer.client import CoordinatorLink
from trainer.config import TrainerConfig
from trainer.evaluate import append_csv, evaluate, evaluated_versions
from trainer.filtering import FilterCounts, filter_groups
from trainer.history import WeightHistory
from trainer.schedule import lr_schedule
from trainer.status import PhaseClock, StatusBoard, TrainerMetrics
from trainer.step import StepOptions, StepResult

log = logging.getLogger("swarmrl.trainer")


@dataclass
class Pending:
    """Kept groups waiting for a step, with their advantages."""

    items: list[tuple[TrainingGroup, list[float]]] = field(default_factory=list)

    def ids(self) -> set[str]:
        return {g.submission_id for g, _ in self.items}


def step_options(cfg: TrainerConfig, pad_id: int) -> StepOptions:
    return StepOptions(loss=cfg.loss, grad_clip=cfg.grad_clip, updates=cfg.updates_per_batch,
                       row_tokens=cfg.row_tokens, micro_batch_tokens=cfg.micro_batch_tokens, pad_id=pad_id,
                       lr_at=lr_schedule(cfg), autocast=torch.bfloat16 if cfg.precision == "bf16-mixed" else None,
                       logit_rows=cfg.logit_rows)


def step_scalars(result: StepResult, rewards: list[float], *, lr: float, groups: int) -> dict[str, float]:
    """What the experiment tracker records of one step (names "train/..."); the step is the
    version the step produced."""
    st = result.stats
    return {"train/loss": st.get("loss", 0.0), "train/kl": st.get("kl", 0.0),
            "train/clip_fraction": st.get("clip_fraction", 0.0), "train/entropy": st.get("entropy", 0.0),
            "train/importance_weight": st.get("importance_weight", 1.0),
            "train/importance_capped_fraction": st.get("importance_capped_fraction", 0.0),
            "train/grad_norm": result.grad_norm, "train/lr": lr, "train/reward": sum(rewards) / max(1, len(rewards)),
            "train/groups": groups, "train/tokens": result.tokens, "train/stale_tokens": result.stale_tokens,
            "train/tokens_per_s": result.tokens / max(result.seconds, 1e-9), "train/step_seconds": result.seconds,
            "train/padding_fraction": 1 - result.real_tokens / max(result.padded_tokens, 1)}


class TrainerLoop:
    """State of a running trainer (rank 0). `step_fn(groups) -> StepResult` runs one step on
    every rank; `save_fn(version, step, state) -> Saved` writes a complete checkpoint."""

    def __init__(self, cfg: TrainerConfig, *, model: Any, tokenizer: Any, store: CheckpointStore, inbox: Inbox,
                 link: CoordinatorLink, origin: Any, history: WeightHistory, version: int, step: int,
                 step_fn: Callable[[list], StepResult], save_fn: Callable[[int, int, dict], Any],
                 source: Any, clock: PhaseClock, metrics: TrainerMetrics, board: StatusBoard,
                 should_stop: Callable[[], bool]):
        self.cfg = cfg
        self.model, self.tokenizer = model, tokenizer
        self.store, self.inbox, self.link, self.origin = store, inbox, link, origin
        self.history = history
        self.version, self.step = version, step
        self.step_fn, self.save_fn = step_fn, save_fn
        self.source = source
        self.clock, self.metrics, self.board = clock, metrics, board
        self.should_stop = should_stop
        self.pending = Pending()
        self.trained: dict[str, int] = store.trained()  # submission id -> policy version, inside the window
        self.counts = FilterCounts()
        self.evaluated = evaluated_versions(cfg.data_dir / "eval.csv")
        self.eval_model_fn: Callable[[], Any] = lambda: self.model
        self.tracker: Tracker = NullTracker()  # `protocol.tracking`: set by setup.build_trainer
        self.lr_at = lr_schedule(cfg)

    # -- versions ------------------------------------------------------------------------------
    def announce(self) -> None:
        """Publish the current version through the origin and tell the coordinator."""
        saved = self.store.get(self.version)
        with self.clock.phase("publishing"):
            env = self.origin.publish(saved.model_dir, self.version, self.step)
            self.link.announce(env)
        self.metrics.version.set(self.version)
        self.board.update(version=self.version, step=self.step)
        log.info("policy version %d published and announced", self.version)

    def maybe_evaluate(self, force: bool = False) -> None:
        every = self.cfg.eval.every_versions
        if self.source is None or self.version in self.evaluated:
            return
        if not force and (every == 0 or self.version % every != 0):
            return
        with self.clock.phase("evaluating"):
            res = evaluate(self.eval_model_fn(), self.tokenizer, self.source, version=self.version, step=self.step,
                           wall_s=self.clock.elapsed(), num_tasks=self.cfg.eval.num_tasks,
                           max_new_tokens=self.cfg.max_eval_tokens, sampled=self.cfg.eval.sampled,
                           temperature=self.cfg.eval.temperature, chat=self.cfg.tasks.chat_template)
        if res is None:   # no task could be evaluated (logged): nothing to report, and not asked again
            self.evaluated.add(self.version)
            return
        try:
            append_csv(self.cfg.data_dir / "eval.csv", res)
        except OSError as exc:  # a local log (a full disk): the result is still reported below
            log.error("could not append version %d's evaluation to %s (%s); it is still reported", self.version,
                      self.cfg.data_dir / "eval.csv", exc)
        self.evaluated.add(self.version)
        self.link.report_eval(EvalReport(policy_version=res.version, step=res.step,
                                         greedy_accuracy=res.greedy_accuracy, sampled_accuracy=res.sampled_accuracy,
                                         num_tasks=res.num_tasks, seconds=res.seconds))
        self.metrics.accuracy.labels("greedy").set(res.greedy_accuracy)
        if res.sampled_accuracy is not None:
            self.metrics.accuracy.labels("sampled").set(res.sampled_accuracy)
        self.metrics.eval_version.set(self.version)
        self.tracker.log({"eval/greedy_accuracy": res.greedy_accuracy, "eval/sampled_accuracy": res.sampled_accuracy,
                          "eval/seconds": res.seconds}, step=self.version)
        self.board.add_eval({"version": res.version, "step": res.step, "wall_s": round(res.wall_s, 2),
                             "greedy_accuracy": res.greedy_accuracy, "sampled_accuracy": res.sampled_accuracy})
        log.info("eval version %d: greedy accuracy %.1f%%%s (%d tasks, %.1f s)", self.version,
                 100 * res.greedy_accuracy,
                 "" if res.sampled_accuracy is None else f", sampled {100 * res.sampled_accuracy:.1f}%",
                 res.num_tasks, res.seconds)

    # -- data ----------------------------------------------------------------------------------
    def window_floor(self) -> int:
        """The oldest version a step still trains: the staleness limit below the current one."""
        return window_floor(self.version, self.cfg.staleness_limit)

    def admit(self, groups: list[TrainingGroup]) -> dict[str, str]:
        """Filter new (or re-loaded) groups into `pending`. Returns the dropped ones that the
        coordinator should count as unused, with why: the caller tells the coordinator, and
        only then removes them from the inbox (`_report_unused`), so a trainer killed in
        between reports them in its next life instead of leaving them without a cause."""
        floor = self.window_floor()
        pending = self.pending.ids()
        again = [g.submission_id for g in groups if g.submission_id in self.trained]
        if again:  # handed out twice, or left in the inbox by a crash after its version was saved
            self.inbox.remove(again)
            log.info("%d groups were trained already; not training them again", len(again))
        fresh = [g for g in groups if g.submission_id not in pending and g.submission_id not in self.trained]
        if len(fresh) < len(groups):
            self.metrics.groups.labels("duplicate").inc(len(groups) - len(fresh))
        stale = [g for g in fresh if g.policy_version < floor or g.policy_version > self.version]
        if stale:
            self.metrics.groups.labels("stale").inc(len(stale))
        ok = [g for g in fresh if floor <= g.policy_version <= self.version]
        kept, counts = filter_groups(ok, min_pass_rate=self.cfg.min_pass_rate, max_pass_rate=self.cfg.max_pass_rate)
        self.metrics.groups.labels("zero_advantage").inc(counts.zero_advantage)
        self.metrics.groups.labels("pass_rate_window").inc(counts.outside_pass_window)
        self.counts.zero_advantage += counts.zero_advantage
        self.counts.outside_pass_window += counts.outside_pass_window
        self.pending.items.extend(kept)  # type: ignore[arg-type]
        return {g.submission_id: "stale" for g in stale} | counts.why

    def _report_unused(self, ids: list[str], unused: dict[str, str]) -> None:
        """Acknowledge `ids`, naming the `unused` ones and why; then forget those (inbox)."""
        self.link.ack(ids, unused)
        self.inbox.remove(list(unused))

    def refresh_window(self) -> None:
        """After a new version, drop pending groups that fell below the staleness limit, and tell
        the coordinator they will not be trained."""
        floor = self.window_floor()
        old = [g for g, _ in self.pending.items if g.policy_version < floor]
        if old:
            self.pending.items = [(g, a) for g, a in self.pending.items if g.policy_version >= floor]
            self.metrics.groups.labels("stale").inc(len(old))
            ids = [g.submission_id for g in old]
            self._report_unused(ids, dict.fromkeys(ids, "stale"))
        self.trained = {sid: v for sid, v in self.trained.items() if v >= floor}

    def fill(self) -> bool:
        """Take batches until `groups_per_step` groups are pending; False if asked to stop."""
        need = self.cfg.groups_per_step
        while len(self.pending.items) < need:
            if self.should_stop():
                return False
            with self.clock.phase("waiting"):
                resp = self.link.take_batch(need - len(self.pending.items), self.window_floor(),
                                            self.cfg.batch_wait_s)
            if resp.dropped_stale:
                self.metrics.groups.labels("dropped_by_coordinator").inc(resp.dropped_stale)
            if resp.groups:
                self.inbox.put(resp.groups)  # durable first: only then may the coordinator forget them
                self.metrics.groups.labels("received").inc(len(resp.groups))
                unused = self.admit(resp.groups)
                self._report_unused([g.submission_id for g in resp.groups], unused)
            self.board.update(state="waiting", pending=len(self.pending.items))
        return True

    # -- the loop ------------------------------------------------------------------------------
    def train_once(self) -> StepResult:
        # groups in their last version within the limit first (they go stale at the next version),
        # then the freshest (stable: among one version, in arrival order); the rest wait in `pending`
        floor = self.window_floor()
        self.pending.items.sort(key=lambda item: (item[0].policy_version > floor, -item[0].policy_version))
        batch = self.pending.items[: self.cfg.groups_per_step]
        self.board.update(state="training")
        with self.clock.phase("training"):
            result = self.step_fn(batch)
        self.step += 1
        new_version = self.version + 1
        trained = {g.submission_id: g.policy_version for g, _ in batch}
        state = {"step": self.step, "filter": vars(self.counts) | {"dropped_ids": []},
                 "trained": [[sid, v] for sid, v in trained.items()]}
        with self.clock.phase("saving"):
            self.save_fn(new_version, self.step, state)
        self.trained.update(trained)  # durable with the version just saved
        self.version = new_version
        self.history.remember(self.version, self.store.get(self.version).model_dir)
        consumed = [g.submission_id for g, _ in batch]
        self.pending.items = self.pending.items[len(batch):]
        self.announce()
        self.inbox.remove(consumed)
        self.refresh_window()
        rewards = [r for g, _ in batch for r in g.rewards]
        self.metrics.steps.inc()
        self.metrics.loss.set(result.stats.get("loss", 0.0))
        self.metrics.grad_norm.set(result.grad_norm)
        self.metrics.clip_fraction.set(result.stats.get("clip_fraction", 0.0))
        self.metrics.importance.set(result.stats.get("importance_weight", 1.0))
        self.metrics.tokens.inc(result.tokens)
        self.metrics.stale_tokens.inc(result.stale_tokens)
        self.metrics.missing_behaviour.inc(result.missing_behaviour_tokens)
        self.metrics.groups.labels("trained").inc(len(batch))
        self.metrics.reward.set(sum(rewards) / max(1, len(rewards)))
        self.tracker.log(step_scalars(result, rewards, lr=self.lr_at(result.version), groups=len(batch)),
                         step=self.version)
        log.info("step %d -> version %d: %d groups, %d tokens (%d stale, %d without weights), importance %.3f, "
                 "loss %.4f, grad %.3f, clip %.3f, reward %.3f, %.2f s", self.step, self.version, len(batch),
                 result.tokens, result.stale_tokens, result.missing_behaviour_tokens,
                 result.stats.get("importance_weight", 1.0), result.stats.get("loss", 0.0), result.grad_norm,
                 result.stats.get("clip_fraction", 0.0), sum(rewards) / max(1, len(rewards)), result.seconds)
        return result

    def run(self) -> None:
        spooled = self.inbox.load(TrainingGroup)
        unused = self.admit(spooled)
        if spooled:  # a crash may have come between the spool write and the acknowledgement
            self._report_unused([g.submission_id for g in spooled], unused)
        self.announce()
        if self.cfg.eval.at_start:
            self.maybe_evaluate(force=True)
        while not self.should_stop():
            if self.cfg.max_versions and self.version >= self.cfg.max_versions:
                log.info("reached max_versions=%d; stopping", self.cfg.max_versions)
                break
            if not self.fill():
                break
            self.train_once()
            self.maybe_evaluate()
        self.board.update(state="stopped")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
