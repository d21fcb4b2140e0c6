"""Serving slots shared among remote peers and their addresses: the bookkeeping of
shardcast.p2p._host's stream handler (streams waiting for their request, and requests being
answered, each a `Slots`).

Peer ids cost nothing, so a cap per peer alone lets two fresh keys hold all four of a
holder's slots (each its two), one deadline after another. A `Slots` table admits at most
`per_peer` entries of one peer and `total` in all; when it is full, a peer holding none takes
the slot of a peer holding `per_peer` (one that never finished a transfer here first, then
the longest held), whose transfer the caller cancels. So k keys hold at most k slots against
newcomers once k * per_peer would fill the table.

Keys holding one slot each are not bounded by that: `total` keys from one machine filled the
table, and every newcomer was refused. So each slot also names its peer's address (the
caller's key: an IPv4 address or an IPv6 /64, `protocol.guard.address_key`; None where it
cannot be told, one address like any other, so those peers share one share), and
`per_address` is an address's share of a full table:
- when the table is full, a peer whose address holds none takes the slot of an address
  holding `per_address` or more; a peer whose address holds fewer than `per_address` takes
  the slot of an address holding more than `per_address`;
- an address may hold more than its share while slots are free (a NAT, or every peer of a
  local swarm on 127.0.0.1, uses idle capacity), only never against another address that
  wants a slot and holds less.
So many keys from one address hold at most `per_address` slots against peers of other
addresses, and k addresses at most k * per_address; a peer holding `per_peer` stays fair
game for a key holding none, whatever its address, as before.

Pure bookkeeping, no I/O: the caller's clock and keys, and a `cancel` callable per slot.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

MAX_REMEMBERED = 4096  # peers that finished a transfer here, remembered (oldest forgotten first)


@dataclass(eq=False)
class Slot:
    peer: str | None
    address: str | None  # the key of the peer's address (an IPv4 address, an IPv6 /64)
    started: float
    cancel: Callable[[], None]
    taken_back: bool = False  # given to a peer that held none: the caller's transfer is cancelled


class Slots:
    def __init__(self, total: int, per_peer: int, per_address: int):
        if per_address < per_peer:
            raise ValueError(f"per_address ({per_address}) must be at least per_peer ({per_peer})")
        self.total, self.per_peer, self.per_address = total, per_peer, per_address
        self._held: list[Slot] = []
        self._finished: OrderedDict[str | None, None] = OrderedDict()

    def live(self) -> list[Slot]:
        return [s for s in self._held if not s.taken_back]

    def take(self, peer: str | None, address: str | None, now: float,
             cancel: Callable[[], None]) -> Slot | None:
        """A slot for `peer` (whose address's key is `address`), or None (busy)."""
        live = self.live()
        of_peer = Counter(s.peer for s in live)
        of_address = Counter(s.address for s in live)
        if of_peer[peer] >= self.per_peer:
            return None
        if len(live) >= self.total:
            victims = [s for s in live if self._may_take(peer, address, s, of_peer, of_address)]
            if not victims:
                return None
            victim = min(victims, key=lambda s: (s.peer in self._finished, s.started))
            victim.taken_back = True
            victim.cancel()
        slot = Slot(peer, address, now, cancel)
        self._held.append(slot)
        return slot

    def _may_take(self, peer: str | None, address: str | None, held: Slot,
                  of_peer: Counter, of_address: Counter) -> bool:
        """Whether a requester (`peer` from `address`) may take `held` in a full table."""
        if not of_peer[peer] and of_peer[held.peer] >= self.per_peer:
            return True
        mine, theirs = of_address[address], of_address[held.address]
        return (not mine and theirs >= self.per_address) or (mine < self.per_address < theirs)

    def release(self, slot: Slot, finished: bool = False) -> None:
        """`slot` is free again; `finished`: its peer completed a transfer."""
        self._held.remove(slot)
        if finished:
            self._finished.pop(slot.peer, None)
            self._finished[slot.peer] = None
            while len(self._finished) > MAX_REMEMBERED:
                self._finished.popitem(last=False)
