"""The link model of the simulated internet: what happens to one packet on one access link.

Every site (the operator, a region's relay, a worker, a NAT router) reaches the "core" of the
simulated internet through one access link with two directions: its uplink (site -> core) and
its downlink (core -> site). A packet from site A to site B crosses A's uplink, then B's
downlink. Each direction is a FIFO with a rate, a drop-tail buffer, a random loss and a
one-way propagation delay (the site's half of any path; A -> B takes delay(A) + delay(B) plus
serialisation and queueing). The core itself is free and never drops, except where a fault
says so (`Faults`: a partition between two groups of sites, a link cut).

Why a model of our own: the kernel's netem qdisc (delay, loss) is not in this machine's
kernel, and tc tbf/htb only shape rate. The emulator (tests.wan.internet) moves real IP
packets between TUN devices, one per site, and asks this module, per packet, when (or
whether) it leaves each queue; the kernel's TCP stacks in the namespaces then see real
delay, queueing and loss. All functions here are pure: the caller passes the clock and the
random draw, so the model is unit-tested without root (tests/unit/wan/).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Direction:
    """One direction of an access link: rate, buffer, loss, one-way delay, and its queue state."""

    rate_bps: float                 # bits per second
    delay_s: float                  # one-way propagation delay of this direction
    loss: float = 0.0               # probability that a packet is lost on this direction
    buffer_bytes: int = 256 * 1024  # drop-tail buffer: bytes waiting to be sent
    up: bool = True                 # False: the link is cut (every packet dropped)
    busy_until: float = 0.0         # when the last admitted packet finishes serialising
    sent_bytes: int = 0
    sent_packets: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"loss": 0, "queue": 0, "down": 0})

    def backlog_bytes(self, now: float) -> float:
        """Bytes still waiting in this direction's queue at `now`."""
        return max(0.0, self.busy_until - now) * self.rate_bps / 8

    def admit(self, now: float, size: int, draw: float) -> float | None:
        """The time the packet of `size` bytes, offered at `now`, arrives at the far end of this
        direction (serialised after what is queued, then propagated), or None when it is
        dropped: the link is down, `draw` (uniform in [0, 1)) falls under the loss rate, or
        the buffer is full (drop-tail). Admitting it advances the queue."""
        if not self.up:
            self.dropped["down"] += 1
            return None
        if draw < self.loss:
            self.dropped["loss"] += 1
            return None
        if self.backlog_bytes(now) + size > self.buffer_bytes:
            self.dropped["queue"] += 1
            return None
        start = max(now, self.busy_until)
        self.busy_until = start + size * 8 / self.rate_bps
        self.sent_bytes += size
        self.sent_packets += 1
        return self.busy_until + self.delay_s

    def stats(self) -> dict:
        return {"bytes": self.sent_bytes, "packets": self.sent_packets, "dropped": dict(self.dropped)}


def buffer_for(rate_bps: float, seconds: float = 0.05, floor: int = 64 * 1024) -> int:
    """A drop-tail buffer holding `seconds` of traffic at `rate_bps` (at least `floor` bytes):
    home routers and relays' NICs queue tens of milliseconds, not single packets."""
    return max(floor, int(rate_bps / 8 * seconds))


@dataclass
class Faults:
    """Network faults in force: pairs of sites that cannot reach each other (partitions).
    Link cuts and flaps are `Direction.up` on the site's own link."""

    blocked: set[frozenset[str]] = field(default_factory=set)

    def partition(self, group_a: list[str], group_b: list[str]) -> None:
        for a in group_a:
            for b in group_b:
                if a != b:
                    self.blocked.add(frozenset((a, b)))

    def heal(self) -> None:
        self.blocked.clear()

    def allows(self, src: str, dst: str) -> bool:
        return frozenset((src, dst)) not in self.blocked


def route(dst_ip: bytes, owner: dict[bytes, str]) -> str | None:
    """The site that owns the destination address (IPv4, 4 bytes), or None (not routed: a
    private address behind a NAT, or nobody's)."""
    return owner.get(dst_ip)


def ipv4_dst(packet: bytes) -> bytes | None:
    """Destination address of an IPv4 packet (TUN without packet info), None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return packet[16:20]
