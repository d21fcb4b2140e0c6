"""Lease sizing: how many leases a worker may hold, so that the work handed out can be
submitted, verified and taken by the trainer before it falls below the buffer's floor
(issue 23: in a 2.5-minute demo, three in ten verified groups were dropped as stale).

The rule (`leases_allowed`, a pure function of the measurements it is given):

    budget  = staleness x version interval - verification time - margin
              (how long a group leased now has before the trainer's floor passes its version:
              `staleness` versions, each `interval` seconds apart, less the time a submission
              waits for its verdict and a safety margin)
    rate    = the worker's recent throughput: its newest `history` submitted leases divided by
              the span from the first one's issue to the last one's submission
    own     = rate x budget leases, at least 1 and at most `max_leases`
    room    = what the trainer takes per version x min(staleness + 1, demand_steps) - the
              groups already on their way (active leases, queued submissions, the buffer
              above the floor), for workers with verified work accepted (established);
              the others (new identities) hold at most `new_identity_share` of it between
              them, on top, and those of one address group (an IPv6 /48; an IPv4 address is its own:
              `protocol.guard.address_group`; exempt addresses excepted) at most
              `new_group_share` of that (`Demand.room`)
    allowed = min(own, what it holds + room); with no room left, what it holds (it waits
              for the trainer: a lease more would only make a group that goes stale), but
              one lease when nothing at all is on its way

A worker refused by the second bound is told to ask again after `retry_share` of the version
interval (between `MIN_RETRY_S` and `MAX_RETRY_S`; `Sizing.retry_after_s`): room appears when
the trainer takes its next batch, about once a version, and a fixed 1 s wait left the demo's
workers idle for half of the time while the trainer waited for data (versions ~1 s apart).
Where versions are minutes apart the wait stays at `MAX_RETRY_S`, so a large swarm's refused
workers do not poll faster than before; and the wait is never shorter than the swarm's active
workers over `MAX_REFUSED_POLLS_PER_S` (`spread_retry`), so that with fast versions a large
swarm does not poll faster than before either (1,000 workers: 1 s, as before issue 23).

The first bound keeps a worker from taking more than it can finish in time; the second keeps
the swarm from making more than the trainer can take in time (workers that together outrun the
trainer would otherwise fill the buffer with groups that go stale: in bench/learning.py on a
busy machine, 60% of the accepted groups did). `demand_steps` (2) is small on purpose: a
buffer that holds more than a step or two of surplus is drained by staleness, not by the
trainer, and a drained group frees room for the next one to go stale; with a step's worth in
the pipeline and a step's worth waiting, the trainer takes fresh groups and rarely waits.
What the trainer takes per version is every group it
acknowledged divided by the versions it published: its step size (with what it filters), however
short of groups the swarm is (a per-version count of groups *of* recent versions is not: when
versions outrun the swarm a version has none of its own, the bound shrinks, and the trainer
starves; bench/learning saw that). Until the trainer has taken a group a version (and before
`demand_versions` versions), it counts as taking one step a version: the most groups one of its
batch requests asked for (`trainer_take`); before its first request there is no second bound.

A worker with fewer than `min_history` submitted leases is new: it may hold `new_worker_leases`
until its rate is known. A worker that falls behind (slower submissions, or faster versions)
measures a lower rate or a shorter budget and gets fewer leases, never none: one lease keeps
measuring it, and costs at most one group. Before the trainer has published `min_versions`
versions there is no interval to fit and only `max_leases` applies.

Collaborators: `coordinator.service.work.lease` reads the measurements (the worker's newest
submitted leases, the newest versions' arrival times, recent verification times, the buffer's
floor) and caps each lease request with the result (`rules.leasing.leases_to_issue`); `coordinator.config.LeaseSizingConfig` holds
the knobs. The measurements are the coordinator's own clock: nothing a worker reports.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SizingTerms:
    """The knobs (from `coordinator.config.LeaseSizingConfig`)."""

    enabled: bool = True
    history: int = 16              # newest submitted leases of a worker that measure its rate
    min_history: int = 4           # submitted leases before a worker's rate counts
    new_worker_leases: int = 8     # what a worker holds before its rate is known
    min_versions: int = 3          # versions before the interval counts
    margin_s: float = 0.5          # slack for the trainer's take and the network
    demand_versions: int = 1       # versions before what the trainer takes per version counts
    demand_steps: float = 2.0      # steps' worth of groups the swarm may have on their way to the trainer
    retry_share: float = 0.25      # a worker refused by the swarm bound asks again after this share of the version interval
    new_identity_share: float = 0.25  # share of the swarm bound that workers without verified work may hold together
    new_group_share: float = 0.25   # share of that share that new identities of one address group may hold together


@dataclass(frozen=True)
class Demand:
    """What the trainer can take, and what is already on its way to it: `in_flight` from
    established workers (verified work accepted), `new` from the others (their active leases
    and queued submissions). `new_share`: the share of the bound that new identities may hold
    together; None while no established worker is active (the start of a run: everyone is new)."""

    per_version: float             # groups the trainer takes per version (all it acknowledged / versions)
    in_flight: int                 # active leases + queued submissions + unconsumed groups above the floor
    new: int = 0                   # of those not in in_flight: new identities' active leases and queued submissions
    new_share: float | None = None
    of_group: int | None = None    # of `new`: those of new identities in the asker's address group (None: no cap)
    group_share: float = 1.0       # the share of the newcomers' share one address group may hold

    def room(self, staleness: int, steps: float, new_identity: bool = False) -> float:
        """Groups that may still be leased now (by a new identity, or by an established worker)
        and taken before they go stale. Established workers have the whole bound, whatever new
        identities hold; new identities hold at most `new_share` of it between them, on top:
        throw-away identities that take leases and sit on them until they expire (free to
        make) must not hold the room that honest workers need (they did: every worker was in
        one pool, first come, and the run stopped), nor any part of it (carved out of the
        bound, new identities that fill their share would take a quarter of the established
        workers' pipeline whenever they like)."""
        bound = self.per_version * min(staleness + 1, steps)
        if self.new_share is None:
            return bound - self.in_flight - self.new
        if new_identity:
            share = max(1.0, self.new_share * bound)
            room = share - self.new
            if self.of_group is not None:
                # one holder of many addresses (a home line's /48 holds 65,536 address keys) must
                # not fill the newcomers' share alone: honest newcomers elsewhere are then never
                # served while its throw-away identities sit on leases (bench/hostile.py's squatters
                # and spam did: the payload worker, a newcomer, got 0 of 46 tries)
                room = min(room, max(1.0, self.group_share * share) - self.of_group)
            return room
        return bound - self.in_flight


@dataclass(frozen=True)
class Sizing:
    """The decision and what it came from (for logs and tests)."""

    allowed: int                   # leases the worker may hold in all
    budget_s: float | None         # None: no version interval yet
    rate: float | None             # groups per second; None: not enough history
    why: str
    retry_after_s: float | None = None  # when it may hold no more: when to ask again (None: the caller's default)
    own: int | None = None         # refused for room: what the first bound alone allows (a held request waits for it)


MIN_RETRY_S = 0.2                  # a refused worker's fastest retry (bounds the lease requests of a waiting swarm)
MAX_RETRY_S = 1.0                  # and its slowest (the wait before issue 23's second bound could shorten it)
MAX_REFUSED_POLLS_PER_S = 200.0    # lease requests a second that a swarm's refused workers may make together


def retry_after(interval: float | None, share: float) -> float:
    """When a worker refused for lack of room should ask again: `share` of the version interval
    (room appears when the trainer takes a batch, about once a version), within the bounds."""
    if interval is None:
        return MAX_RETRY_S
    return min(MAX_RETRY_S, max(MIN_RETRY_S, share * interval))


def spread_retry(advice: float | None, active_workers: int) -> float:
    """The wait a refused worker is told: the sizing's `advice` (`Sizing.retry_after_s`; None:
    `MAX_RETRY_S`), but at least `active_workers` / `MAX_REFUSED_POLLS_PER_S` (at most
    `MAX_RETRY_S`): shortening the wait must not multiply a large swarm's lease requests."""
    if advice is None:
        return MAX_RETRY_S
    return max(advice, min(MAX_RETRY_S, active_workers / MAX_REFUSED_POLLS_PER_S))


def trainer_take(taken: int, versions: int, step: int) -> float:
    """Groups the trainer takes per version: all it acknowledged over the versions it published
    once that is at least one a version; until then one step (`step`: the most groups one of its
    batch requests asked for), so that the start, when every worker is new and checked in full,
    does not lease more than the verifier can check before the versions move past it (issue 23:
    140 of a 2.5-minute bench's 219 stale groups were leased in its first 15 s); 0 before any
    request (no swarm bound)."""
    return taken / versions if taken >= versions > 0 else float(step)


def version_interval(arrivals: Sequence[float], now: float) -> float | None:
    """Seconds between versions from the newest arrival times (ascending): their mean gap, or the
    time since the newest when that is longer (a trainer waiting for data gives more time)."""
    if len(arrivals) < 2:
        return None
    mean = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    return max(mean, now - arrivals[-1])


def worker_rate(leases: Sequence[tuple[float, float]]) -> float | None:
    """Groups per second from (issued_at, submitted_at) of a worker's newest submitted leases."""
    if not leases:
        return None
    span = max(s for _, s in leases) - min(i for i, _ in leases)
    return len(leases) / span if span > 0 else None


def leases_allowed(*, max_leases: int, held: int, recent: Sequence[tuple[float, float]], arrivals: Sequence[float],
                   staleness: int, verify_s: Sequence[float], demand: Demand | None, now: float,
                   terms: SizingTerms, new_identity: bool = False, dropped: int = 0,
                   mostly_dropped: bool = False) -> Sizing:
    """How many leases a worker may hold now (see the module docstring for the rule).

    `held`: its active leases; `recent`: (issued_at, submitted_at) of its newest submitted
    leases; `arrivals`: arrival times of the newest policy versions, ascending; `staleness`:
    versions a group may lag when the trainer takes it (current - the buffer's floor);
    `verify_s`: recent submission-to-verdict times (their median is used); `demand`: what the
    trainer takes and what is on its way (None: not measured yet); `new_identity`: the worker has
    no verified work yet (its room is the new identities' share, `Demand.room`); `dropped`: leases
    it released or let expire. A worker that dropped leases and has never submitted one holds
    one at a time until it submits: an identity that takes leases only to sit on them (to fill
    the new identities' share) holds one after its first ones expire. So does one whose record
    is `mostly_dropped` (`rules.reputation.mostly_dropped`: more leases dropped than kept, beyond
    the free allowance): submitting a few groups first bought a squatter its whole quota for
    ever, its rate being measured from submitted leases only; it gets it back by submitting."""
    if not terms.enabled:
        return Sizing(max_leases, None, None, "lease sizing off")
    own = _own(max_leases, recent, arrivals, staleness, verify_s, now, terms)
    if dropped > 0 and not recent:
        own = Sizing(1, own.budget_s, own.rate, "dropped leases and never submitted one")
    elif mostly_dropped:
        own = Sizing(1, own.budget_s, own.rate, "dropped more leases than it kept")
    if demand is None:
        return own
    room = max(0, math.floor(demand.room(staleness, terms.demand_steps, new_identity)))
    if held + room >= own.allowed:
        return own
    allowed = max(1, held + room) if demand.in_flight + demand.new == 0 else held + room
    interval = version_interval(arrivals, now) if len(arrivals) >= terms.min_versions else None
    return Sizing(allowed, own.budget_s, own.rate,
                  f"the trainer takes {demand.per_version:.1f} groups a version; {demand.in_flight} on their way",
                  retry_after(interval, terms.retry_share), own.allowed)


def _own(max_leases: int, recent: Sequence[tuple[float, float]], arrivals: Sequence[float], staleness: int,
         verify_s: Sequence[float], now: float, terms: SizingTerms) -> Sizing:
    """The first bound: what this worker can finish in time."""
    if len(recent) < terms.min_history:
        return Sizing(min(max_leases, terms.new_worker_leases), None, None, "new worker")
    interval = version_interval(arrivals, now) if len(arrivals) >= terms.min_versions else None
    rate = worker_rate(recent)
    if interval is None or rate is None:
        return Sizing(max_leases, None, rate, "no version interval yet")
    verify = statistics.median(verify_s) if verify_s else 0.0
    budget = max(1, staleness) * interval - verify - terms.margin_s
    allowed = max(1, min(max_leases, math.floor(rate * budget))) if budget > 0 else 1
    return Sizing(allowed, budget, rate, f"{rate:.2f} groups/s x {budget:.1f} s")
