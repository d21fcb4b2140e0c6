"""Everything a coordinator operation needs, built once at start-up and passed explicitly.

The service functions (`coordinator.service.*`) take a `Context` and a verified message and
return a response; they read the clock and draw randomness only through `ctx.clock` and
`ctx.rng`, so tests drive time and seeds. No module keeps global state: two coordinators in
one process (as in tests) share nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from coordinator.admission import identity_address
from coordinator.config import CoordinatorConfig
from coordinator.errors import ConfigError
from coordinator.metrics import Metrics
from coordinator.rules.limits import RateLimiter
from coordinator.store import meta, workers
from coordinator.store.db import Database, normalise_url
from coordinator.taskbook import TaskBook
from protocol.errors import ProtocolError
from protocol.guard import Networks
from protocol.identity import KeyPair, PublicKey

log = logging.getLogger("swarmrl.coordinator")


class Wakeup:
    """Wakes requests that long-poll on this process's event loop for something to change:
    `notify_all` every waiter (the trainer's batch requests, `Context.groups`: accepted groups
    arrived), `notify` the oldest one (lease requests held for room, one per lane in `Context.room`: a woken
    request that got leases wakes the next, so a thousand held requests are not all woken for
    one lease's worth of room). In-process only: waiters also re-check the database on their own
    timer (other replicas, other processes). Safe to call from any thread."""

    def __init__(self) -> None:
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self, everyone: bool = False) -> None:
        loop = self._loop
        if loop is None:   # nobody has waited yet
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:   # called off the loop's thread: hand it to the loop
            with contextlib.suppress(RuntimeError):   # the loop has closed: nobody waits
                loop.call_soon_threadsafe(self.notify, everyone)
            return
        while self._waiters:
            f = self._waiters.popleft()
            if not f.done():
                f.set_result(None)
                if not everyone:
                    return

    def notify_all(self) -> None:
        self.notify(everyone=True)

    async def wait(self, timeout_s: float) -> bool:
        """Until notified (True) or `timeout_s` (False)."""
        self._loop = asyncio.get_running_loop()
        f = self._loop.create_future()
        self._waiters.append(f)
        try:
            await asyncio.wait_for(asyncio.shield(f), timeout=max(0.0, timeout_s))
            return True
        except TimeoutError:
            return f.done() and not f.cancelled()   # woken as its time ran out: still a wake
        except asyncio.CancelledError:
            if f.done() and not f.cancelled():      # its request went away: pass the wake on
                self.notify()
            raise
        finally:
            if not f.done():
                f.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(f)


class LaneWakeup:
    """`Wakeup`s for held lease requests, one per intake lane (established workers, new
    identities): `notify()` wakes the oldest waiter of each lane, `notify(lane)` of one (a woken
    request passing the wake on). New identities hold at most their share of the swarm's room
    (`rules.lease_size.Demand`): in one queue, their held requests (the oldest, when they sit
    waiting) took the wakes, were refused for their share and slept again, and the established
    worker whose room it was waited for its retry time."""

    LANES = ("established", "new")

    def __init__(self) -> None:
        self.lanes = {lane: Wakeup() for lane in self.LANES}

    def notify(self, lane: str | None = None) -> None:
        for name, w in self.lanes.items():
            if lane is None or name == lane:
                w.notify()

    async def wait(self, timeout_s: float, lane: str) -> bool:
        return await self.lanes[lane].wait(timeout_s)


@dataclass
class Context:
    cfg: CoordinatorConfig
    db: Database
    key: KeyPair
    operator: PublicKey
    verifier_keys: frozenset[str]
    tasks: TaskBook
    pow_seed: str  # the run's secret proof-of-work seed (challenges per epoch: protocol.pow.epoch_challenge)
    metrics: Metrics
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.SystemRandom)
    groups: Wakeup = field(default_factory=Wakeup)   # accepted groups arrived (the trainer's batch long-poll)
    # the swarm may have room for more work (`submissions.on_their_way` or the active leases went
    # down): lease requests held for room (`coordinator.app._long_poll_lease`)
    room: LaneWakeup = field(default_factory=LaneWakeup)
    identity_limiter: RateLimiter | None = None
    address_limiter: RateLimiter | None = None
    archiver: Any = None  # coordinator.archive.Archiver when archiving is on
    policy_cache: tuple[int | None, bytes] | None = None  # (version, JSON of GET /v1/policy)
    started_at: float = 0.0  # this process's start (clock time); set in __post_init__
    p2p: Any = None  # coordinator.p2p.CoordinatorSwarm while this process runs the swarm node
    # set when this process accepts a new policy version: wakes the checkpoint keeper at once
    # (relays keep only a few versions; its poll interval still covers other replicas)
    new_version: threading.Event = field(default_factory=threading.Event)
    # lease id -> submissions of it being taken in by this process (received, not yet stored or
    # refused): the sweep leaves such a lease open past its expiry, as its submission arrived in
    # time (`coordinator.service.work`, receipt time). Touched on the event loop thread only.
    in_intake: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = self.clock()
        # each server process enforces its share of the configured limits (the kernel spreads
        # connections over the processes), so together they approximate the configured rate
        lim, n = self.cfg.limits, self.cfg.workers
        if self.identity_limiter is None:
            self.identity_limiter = RateLimiter(lim.requests_per_s_per_worker / n, max(1.0, lim.burst / n))
        if self.address_limiter is None:
            self.address_limiter = RateLimiter(lim.requests_per_s_per_address / n, max(1.0, lim.burst / n))

    @cached_property
    def exempt(self) -> Networks:
        """`limits.exempt_addresses`, parsed once (the request paths that ask about them)."""
        return Networks(self.cfg.limits.exempt_addresses)

    @property
    def trusted_keys(self) -> frozenset[str]:
        return self.verifier_keys | {self.operator.hex}


def _public_key(hex_key: str, what: str) -> PublicKey:
    try:
        return PublicKey.from_hex(hex_key)
    except ProtocolError as exc:
        raise ConfigError(f"{what} {hex_key!r} is not a hex Ed25519 public key: {exc}") from exc


def prepare_database(cfg: CoordinatorConfig) -> Database:
    """Open the database, create or upgrade its schema, fix the run's proof-of-work challenge,
    and store every worker's address in the form the identities-per-address cap counts
    (`coordinator.admission.identity_address`). That form depends on the configured exempt
    addresses (kept as they are), which a migration cannot see, so it is applied here, at a
    start whose exempt addresses differ from those the stored rows were keyed with
    (`meta.ADDRESS_KEYS_FOR`; the first start after the upgrade included): rows written before
    the cap counted an IPv6 /64 as one address kept the whole address and did not count against
    their /64. Rows registered since are stored keyed, so other starts skip the table scan."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(normalise_url(cfg.database_url, cfg.data_dir), sqlite_synchronous=cfg.sqlite_synchronous)
    db.migrate()
    exempt = Networks(cfg.limits.exempt_addresses)
    with db.write() as conn:
        meta.init_once(conn, meta.POW_CHALLENGE, os.urandom(16).hex())
        keyed_for = ",".join(sorted(cfg.limits.exempt_addresses))
        rekeyed = 0
        if meta.get(conn, meta.ADDRESS_KEYS_FOR) != keyed_for:
            rekeyed = workers.rekey_addresses(conn, lambda a: identity_address(a, exempt))
            meta.put(conn, meta.ADDRESS_KEYS_FOR, keyed_for)
    if rekeyed:
        log.info("stored %d worker address(es) by their per-address key (an IPv6 /64, an IPv4 address)", rekeyed)
    return db


def build_context(cfg: CoordinatorConfig, *, clock: Callable[[], float] = time.time,
                  rng: random.Random | None = None, tasks: TaskBook | None = None,
                  metrics: Metrics | None = None) -> Context:
    """Open (and migrate) the database, load keys and the tokenizer: a ready Context."""
    operator = _public_key(cfg.operator_key, "operator_key")
    verifiers = frozenset(_public_key(k, "verifier key").hex for k in cfg.verifier_keys)
    for k in cfg.join.allowlist:
        _public_key(k, "allowlist key")
    try:
        key = KeyPair.load_or_create(cfg.key_file)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    db = prepare_database(cfg)
    with db.read() as conn:
        challenge = meta.get(conn, meta.POW_CHALLENGE) or ""
    if tasks is None:
        tasks = TaskBook.load(cfg.model, cfg.tasks.kind, cfg.tasks.seed, cfg.tasks.options, cfg.chat_template,
                              max_tokens=cfg.sampling.max_tokens)
    return Context(cfg=cfg, db=db, key=key, operator=operator, verifier_keys=verifiers, tasks=tasks,
                   pow_seed=challenge, metrics=metrics or Metrics(), clock=clock,
                   rng=rng or random.SystemRandom())
