"""Serving slots shared among remote peers: the bookkeeping of shardcast.p2p._host's stream
handler (streams waiting for their request, and requests being answered, each a `Slots`).

Peer ids cost nothing, so a cap per peer alone lets two fresh keys hold all four of a
holder's slots (each its two), one deadline after another. A `Slots` table admits at most
`per_peer` entries of one peer and `total` in all; when it is full, a peer holding none takes
the slot of a peer holding `per_peer` (one that never finished a transfer here first, then
the longest held), whose transfer the caller cancels. So k keys hold at most k slots against
newcomers once k * per_peer would fill the table; a table filled by `total` keys holding one
each still refuses a newcomer (a cap per IP address would be next; on loopback every peer
is 127.0.0.1, where it cannot be tested).

Pure bookkeeping, no I/O: the caller's clock, and a `cancel` callable per slot.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

MAX_REMEMBERED = 4096  # peers that finished a transfer here, remembered (oldest forgotten first)


@dataclass(eq=False)
class Slot:
    peer: str | None
    started: float
    cancel: Callable[[], None]
    taken_back: bool = False  # given to a peer that held none: the caller's transfer is cancelled


class Slots:
    def __init__(self, total: int, per_peer: int):
        self.total, self.per_peer = total, per_peer
        self._held: list[Slot] = []
        self._finished: OrderedDict[str | None, None] = OrderedDict()

    def live(self) -> list[Slot]:
        return [s for s in self._held if not s.taken_back]

    def take(self, peer: str | None, now: float, cancel: Callable[[], None]) -> Slot | None:
        """A slot for `peer`, or None (busy)."""
        live = self.live()
        mine = sum(1 for s in live if s.peer == peer)
        if mine >= self.per_peer:
            return None
        if len(live) >= self.total:
            if mine:
                return None
            counts = Counter(s.peer for s in live)
            victims = [s for s in live if counts[s.peer] >= self.per_peer]
            if not victims:
                return None
            victim = min(victims, key=lambda s: (s.peer in self._finished, s.started))
            victim.taken_back = True
            victim.cancel()
        slot = Slot(peer, now, cancel)
        self._held.append(slot)
        return slot

    def release(self, slot: Slot, finished: bool = False) -> None:
        """`slot` is free again; `finished`: its peer completed a transfer."""
        self._held.remove(slot)
        if finished:
            self._finished.pop(slot.peer, None)
            self._finished[slot.peer] = None
            while len(self._finished) > MAX_REMEMBERED:
                self._finished.popitem(last=False)
