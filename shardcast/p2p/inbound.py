"""Which inbound connections a node's libp2p host takes: counted from what is live, and
shared among the remote addresses. shardcast.p2p._host puts a `LiveInbound` in place of the
swarm's own inbound limiter and in front of its inbound upgrade (the Noise and yamux
handshakes).

py-libp2p 0.8.1's swarm admits an inbound connection through a trio.CapacityLimiter
(max_connections - min_connections = 250 tokens) whose token is given back when the
connection's handler returns; the handler waits for the whole swarm to stop, not for its
connection. So every inbound connection ever accepted spent a token for the node's life, and
the 251st was refused for good: honest churn, or one machine connecting and disconnecting
250 times, left a bootstrap peer (the coordinator) or a holder taking no new peer.
`LiveInbound` counts the swarm's live connections and the handshakes in progress instead,
and ends each connection's handler once that connection is closed (`handle`): the parked
handlers were a task and its connection's objects kept for the node's life per connection
ever accepted, memory any peer could grow by connecting and disconnecting.

Keys are free, so each connection is also charged to its remote address (the caller's key:
`protocol.guard.address_key`, None where it cannot be told). Once the node holds half its
cap, an address holding `per_address` gets no more: one machine's keys cannot fill the table
and keep every other peer out, while a local swarm on 127.0.0.1, or a NAT, still uses the
room that nobody else wants.
"""

from __future__ import annotations

from collections import Counter
from contextvars import ContextVar
from typing import Awaitable, Callable

import trio
from libp2p.network.exceptions import SwarmException

CLOSED_POLL_S = 1.0  # how often a connection without a close event is looked at
# The connection an inbound handler's upgrade produced, for that handler (same task).
_UPGRADED: ContextVar[list | None] = ContextVar("shardcast_p2p_inbound_upgraded", default=None)


def admit(address: str | None, live: Counter, limit: int, per_address: int) -> bool:
    """Whether an inbound connection from `address` may be taken, `live` counting what each
    address holds now (connections and handshakes)."""
    total = sum(live.values())
    if total >= limit:
        return False
    return total < limit // 2 or live[address] < per_address


class LiveInbound:
    """Stands in for the swarm's inbound limiter (`acquire_nowait`, `release`, `total_tokens`)
    and gates its inbound upgrade (`gate`). Runs in the host's trio thread."""

    def __init__(self, network, total_tokens: int, per_address: int,
                 address_of: Callable[[object], str | None]):
        self.network, self.total_tokens, self.per_address = network, total_tokens, per_address
        self.address_of = address_of
        self.handshaking: Counter = Counter()  # address -> inbound handshakes in progress

    def live(self) -> Counter:
        held = Counter(self.handshaking)
        for conn in self.network.get_connections():
            held[self.address_of(getattr(conn, "muxed_conn", conn))] += 1
        return +held

    def acquire_nowait(self) -> None:
        """The swarm's fast check before anything is read: refused once the node is full."""
        if sum(self.live().values()) >= self.total_tokens:
            raise trio.WouldBlock

    def release(self) -> None:
        """Nothing to give back: what is live is counted, not what was taken."""

    def gate(self, upgrade: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        """`upgrade` (the swarm's upgrade_inbound_raw_conn), refusing a connection `admit`
        refuses (closed before its handshake) and counting its handshake while it runs."""

        async def upgrade_inbound(raw_conn, maddr):
            address = self.address_of(raw_conn)
            if not admit(address, self.live(), self.total_tokens, self.per_address):
                await raw_conn.close()
                raise SwarmException(f"inbound connection from {address} refused: its address holds "
                                     f"{self.live()[address]} of this node's connections")
            self.handshaking[address] += 1
            try:
                muxed = await upgrade(raw_conn, maddr)
                box = _UPGRADED.get()
                if box is not None:
                    box.append(muxed)
                return muxed
            finally:
                self.handshaking[address] -= 1
                if self.handshaking[address] <= 0:
                    del self.handshaking[address]

        return upgrade_inbound

    def handle(self, handler: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        """`handler` (the swarm's _handle_inbound_connection), ended once the connection its
        upgrade produced is closed (it would wait for the swarm to stop)."""

        async def handle_inbound(read_write_closer, maddr):
            box: list = []
            token = _UPGRADED.set(box)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_when_closed, box, nursery.cancel_scope)
                    await handler(read_write_closer, maddr)
                    nursery.cancel_scope.cancel()  # refused or failed: it returned by itself
            finally:
                _UPGRADED.reset(token)

        return handle_inbound


async def _cancel_when_closed(box: list, scope: trio.CancelScope) -> None:
    """Cancel `scope` once the connection put in `box` (by the upgrade) is closed."""
    while not box:
        await trio.sleep(CLOSED_POLL_S)
    conn = box[0]
    closed = getattr(conn, "event_closed", None)  # yamux's: set when the connection closes
    if isinstance(closed, trio.Event):
        await closed.wait()
    else:
        while not _is_closed(conn):
            await trio.sleep(CLOSED_POLL_S)
    scope.cancel()


def _is_closed(conn) -> bool:
    closed = getattr(conn, "is_closed", False)  # a property on yamux, a method on some others
    return bool(closed() if callable(closed) else closed)
