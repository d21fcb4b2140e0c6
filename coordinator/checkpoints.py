"""Checkpoints kept for re-verification, next to the Parquet archive.

An archived rollout can be re-verified only against the exact weights it claims. The
trainer's origin and the relays keep a few recent versions; this keeper makes the
coordinator hold the ones the archive needs, under `<data_dir>/archive/` (the layout is
`protocol.archive`'s, which `verifier.audit` reads):

    run.json                  what an auditor needs besides the rows (`RunDescription`): run id,
                              the coordinator, operator and verifier keys, the task source, the tokenizer
    checkpoints/v000012/      policy version 12: the checkpoint files and `.manifest.json`,
                              the operator-signed manifest (every file's sha256)
    checkpoints/.fetch/       downloads in progress (never read by auditors)

Data flow: every `poll_interval_s`, and at once when this process accepts a new version, the
keeper reads the versions the coordinator accepted (`policy_versions`: each POSTed by the
trainer with an operator-signed manifest), fetches each version it must keep through
`shardcast.client.ShardcastClient` from the run's relays (signed manifest, every shard and file
checked against it, written atomically), moves the finished folder to `checkpoints/vNNNNNN/`,
and deletes archived versions no rule keeps any more.

Retention (`CheckpointArchiveConfig`; `retained` and `rejected_within_budget` are the pure
rules): the newest `keep_last` versions (0 = all), every `keep_every`-th version, and always
the versions that may still be claimed or judged (inside the async window, or with submissions
still queued) — so a verdict that arrives late still finds its checkpoint; and, with
`keep_rejected`, the versions rejected submissions claim (the evidence behind each ban), but
only within a budget: at most `rejected_max_versions` versions and `rejected_max_bytes` bytes
(the manifests' sizes) beyond what the other rules keep, the oldest evicted first. Without it,
one garbage submission per version from throw-away identities pinned every checkpoint forever
(200 of 200 versions kept instead of 35). When the budget bites, a warning names the versions
left out and `swarmrl_coordinator_archive_evidence_over_budget_total` counts them.

Runs in a daemon thread of the coordinator process (started and stopped by the dashboard
router's lifespan, in the process that runs background work); it only
reads the database, and a failure (relay down, version pruned upstream, disk full) is logged
and retried on a later pass; a version no relay serves for `give_up_after_s` (pruned upstream,
or a long outage) is given up with one warning.

Order of a pass: newest version first. Relays keep only their last few versions, so in a fast
run the newest are the ones that can still be had and the oldest missing ones may be gone
for good; a version that was not served is asked again only after a back-off (doubling from
`RETRY_FIRST_S` to `RETRY_MAX_S`), and a pass stops after `MAX_FAILURES_PER_PASS` misses, so
versions the relays have pruned never keep a pass from the new ones.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from coordinator.context import Context
from coordinator.store import policy
from coordinator.store.schema import policy_versions, submissions
from protocol.errors import ProtocolError
from protocol.messages import TaskSpec
from protocol.window import window_floor
from protocol.archive import (
    CHECKPOINTS,
    FETCH_DIR,
    RUN_FILE,
    RunDescription,
    checkpoint_dir,
    checkpoint_versions,
)
from protocol.durable import fsync_dir, write_atomic

log = logging.getLogger("swarmrl.coordinator")

def rejected_within_budget(rejected: set[int], kept: set[int], sizes: dict[int, int], *, max_versions: int,
                           max_bytes: int) -> tuple[set[int], list[int]]:
    """(versions kept as evidence of rejections, versions left out, oldest first) (pure).

    Versions other rules keep anyway cost nothing; of the others, the oldest are left out until
    at most `max_versions` remain and their sizes (`sizes`, bytes; unknown = 0) add up to at most
    `max_bytes`."""
    extra = sorted(set(rejected) - set(kept))
    out: list[int] = []
    while extra and (len(extra) > max_versions or sum(sizes.get(v, 0) for v in extra) > max_bytes):
        out.append(extra.pop(0))
    return set(extra), out


def retained(versions: list[int], *, keep_last: int, keep_every: int, pinned: set[int]) -> set[int]:
    """The versions among `versions` that retention keeps (pure)."""
    vs = sorted(set(versions))
    keep = set(vs if keep_last == 0 else vs[-keep_last:])
    if keep_every > 0:
        keep |= {v for v in vs if v % keep_every == 0}
    return keep | (set(vs) & pinned)


def write_run_description(ctx: Context, root: Path) -> Path:
    """Write `<archive>/run.json` atomically (rewritten at every start: keys may be rotated)."""
    cfg = ctx.cfg
    doc = RunDescription(
        run_id=cfg.run_id, coordinator_key=ctx.key.public.hex, operator_key=ctx.operator.hex,
        verifier_keys=sorted(ctx.verifier_keys), model=str(cfg.model), chat_template=cfg.chat_template,
        tasks=TaskSpec(kind=cfg.tasks.kind, seed=cfg.tasks.seed, options=dict(cfg.tasks.options)),
        sampling=cfg.sampling.model_dump(), group_size=cfg.group_size, async_window=cfg.async_window,
        written_at=ctx.clock())
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / RUN_FILE
    write_atomic(path, doc.to_json())
    return path


RETRY_FIRST_S = 2.0        # back-off after a version was not served, doubled per miss
RETRY_MAX_S = 60.0
MAX_FAILURES_PER_PASS = 3  # misses cost a round trip to every relay; the rest wait for the next pass


@dataclass
class Miss:
    """A version no relay served: since when, the current back-off, when to ask again."""

    first_s: float
    backoff_s: float
    retry_at_s: float


class CheckpointKeeper:
    """Fetches the versions the archive must keep and prunes the others (see module docstring)."""

    def __init__(self, ctx: Context, root: Path, client=None, *, give_up_after_s: float = 600.0,
                 clock=time.monotonic):
        self.ctx = ctx
        self.give_up_after_s = give_up_after_s
        self.clock = clock
        self._misses: dict[int, Miss] = {}
        self.cfg = ctx.cfg.checkpoints
        self.root = Path(root)
        if client is None:
            from shardcast.client import ShardcastClient

            client = ShardcastClient(list(ctx.cfg.relays), ctx.operator, self.root / CHECKPOINTS / FETCH_DIR,
                                     run_id=ctx.cfg.run_id, keep_versions=None)
        self.client = client
        self.unavailable: set[int] = set()
        self._sizes: dict[int, int] = {}          # version -> bytes (manifest total_bytes)
        self._over_budget: set[int] = set()       # rejected-claimed versions the budget leaves out
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass -------------------------------------------------------------------------
    def _state(self) -> tuple[list[int], set[int], set[int]]:
        """(announced versions, versions pinned by the rules that depend on live state, versions
        that rejected submissions claim when `keep_rejected`)."""
        c = submissions.c

        def claimed(status: str) -> set[int]:
            return {int(v) for v in conn.execute(
                select(c.policy_version).where(c.status == status).distinct()).scalars()}

        with self.ctx.db.read() as conn:
            announced = [int(v) for v in conn.execute(select(policy_versions.c.version)).scalars()]
            current = policy.current(conn)
            pinned = claimed("queued")
            rejected = claimed("rejected") if self.cfg.keep_rejected else set()
            self._learn_sizes(conn, (rejected & set(announced)) - set(self._sizes))
        floor = window_floor(current, self.ctx.cfg.async_window)
        pinned |= {v for v in announced if v >= floor}
        return announced, pinned, rejected & set(announced)

    def _learn_sizes(self, conn, versions: set[int]) -> None:
        """Bytes of each version, from its signed manifest (read once per version)."""
        if not versions:
            return
        rows = conn.execute(select(policy_versions.c.version, policy_versions.c.manifest)
                            .where(policy_versions.c.version.in_(sorted(versions))))
        for v, manifest in rows:
            try:
                self._sizes[int(v)] = int(json.loads(manifest)["body"]["total_bytes"])
            except (ValueError, KeyError, TypeError):
                self._sizes[int(v)] = 0

    def _evidence(self, rejected: set[int], kept: set[int]) -> set[int]:
        """The rejected-claimed versions within the budget; warns (once per version) about the rest."""
        cfg = self.cfg
        evidence, over = rejected_within_budget(rejected, kept, self._sizes, max_versions=cfg.rejected_max_versions,
                                                max_bytes=cfg.rejected_max_bytes)
        new = sorted(set(over) - self._over_budget)
        self._over_budget = set(over)
        if new:
            self.ctx.metrics.archive_over_budget.inc(len(new))
            log.warning("checkpoint archive: %d versions claimed only by rejected submissions exceed the evidence "
                        "budget (%d versions, %d bytes); not keeping the oldest: %s (raise checkpoints."
                        "rejected_max_versions / rejected_max_bytes to keep more)", len(over) + len(evidence),
                        cfg.rejected_max_versions, cfg.rejected_max_bytes, _short(new))
        return evidence

    def step(self) -> dict[str, list[int]]:
        """Fetch what must be kept and is missing, prune what no rule keeps; returns both."""
        announced, pinned, rejected = self._state()
        want = retained(announced, keep_last=self.cfg.keep_last, keep_every=self.cfg.keep_every, pinned=pinned)
        want |= self._evidence(rejected, want)
        have = set(checkpoint_versions(self.root))
        for v in set(self._misses) - want:  # no rule wants it any more: forget its misses
            del self._misses[v]
        fetched = []
        misses = 0
        now = self.clock()
        for v in sorted(want - have - self.unavailable, reverse=True):
            if self._stop.is_set() or misses >= MAX_FAILURES_PER_PASS:
                break
            if v in self._misses and self._misses[v].retry_at_s > now:
                continue
            outcome = self._fetch(v)
            if outcome == "fetched":
                fetched.append(v)
            elif outcome == "missing":
                misses += 1
        pruned = sorted(have - want)
        for v in pruned:
            self._remove(v)
        return {"fetched": fetched, "pruned": pruned}

    def _fetch(self, version: int) -> str:
        """'fetched', 'missing' (no relay served it) or 'exists' (archived meanwhile)."""
        from shardcast.errors import VersionUnavailable

        t0 = time.monotonic()
        try:
            src = Path(self.client.fetch(version))
        except VersionUnavailable as exc:
            # Pruned by every relay, or every relay unreachable: the client cannot tell us which,
            # so keep asking for `give_up_after_s` (an outage ends; a pruned version never returns).
            now = self.clock()
            miss = self._misses.get(version)
            backoff = RETRY_FIRST_S if miss is None else min(RETRY_MAX_S, 2 * miss.backoff_s)
            first = now if miss is None else miss.first_s
            self._misses[version] = Miss(first_s=first, backoff_s=backoff, retry_at_s=now + backoff)
            if now - first >= self.give_up_after_s:
                self.unavailable.add(version)
                del self._misses[version]
                log.warning("checkpoint archive: giving up on version %d, no relay has served it for %.0f s "
                            "(%s); its rollouts cannot be re-verified", version, now - first, exc)
            elif miss is None:
                log.warning("checkpoint archive: no relay serves version %d now (%s); retrying for %.0f s",
                            version, exc, self.give_up_after_s)
            return "missing"
        self._misses.pop(version, None)
        dst = checkpoint_dir(self.root, version)
        if dst.exists():  # archived meanwhile (another pass) — keep the first copy
            return "exists"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        fsync_dir(dst.parent)
        log.info("checkpoint archive: version %d kept at %s (%.1f s)", version, dst, time.monotonic() - t0)
        return "fetched"

    def _remove(self, version: int) -> None:
        import shutil

        folder = checkpoint_dir(self.root, version)
        trash = folder.with_name(f".{folder.name}.deleting")
        os.replace(folder, trash)  # never leave a half-deleted folder that looks complete
        shutil.rmtree(trash, ignore_errors=True)
        log.info("checkpoint archive: version %d pruned (no retention rule keeps it)", version)

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> "CheckpointKeeper":
        self._thread = threading.Thread(target=self._loop, name="checkpoint-archive", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.ctx.new_version.set()  # wake the loop
        close = getattr(self.client, "close", None)
        if close:
            close()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.last_error = ""
            except (ProtocolError, OSError, SQLAlchemyError) as exc:
                if str(exc) != self.last_error:
                    log.warning("checkpoint archive: %s (retrying every %.0f s)", exc, self.cfg.poll_interval_s)
                self.last_error = str(exc)
            # a new version announced in this process wakes the keeper before relays prune it
            self.ctx.new_version.wait(self.cfg.poll_interval_s)
            self.ctx.new_version.clear()


def _short(versions: list[int]) -> str:
    more = f" and {len(versions) - 10} more" if len(versions) > 10 else ""
    return ", ".join(map(str, versions[:10])) + more


def start_checkpoint_archive(ctx: Context) -> CheckpointKeeper | None:
    """Write run.json and start the keeper; None when the archive or the keeper is off."""
    cfg = ctx.cfg
    if not cfg.archive:
        return None
    root = cfg.data_dir / "archive"
    write_run_description(ctx, root)
    if not cfg.checkpoints.enabled:
        return None
    if not cfg.relays:
        log.warning("checkpoint archive off: no relays configured, so archived rollouts cannot be re-verified "
                    "(set `relays` or checkpoints.enabled = false)")
        return None
    return CheckpointKeeper(ctx, root).start()
