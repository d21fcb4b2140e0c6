"""The simulated internet's data plane: one process that carries every packet between sites.

    python -m tests.wan.internet SPEC.json      # as root; prints "ready" once every link is up

For each site with an access link (SPEC lists them: name, network namespace, address, rates,
delay, loss) it opens a TUN device, moves it into the site's namespace as `wan0` with the
site's address and a route to 10.77.0.0/16, and then forwards IP packets: a packet read from
A's TUN goes to the site that owns its destination address, through A's uplink and B's
downlink (tests.wan.link: rate, drop-tail buffer, loss, delay), and is written to B's TUN
when it arrives. Packets to an address no site owns (a NAT's private side) are dropped.

Why a user-space emulator: this kernel has no netem qdisc, so delay and loss cannot come from
tc. TUN keeps the kernel's own TCP (congestion control, retransmissions, SACK) in every
namespace; only the wire is ours. What it does not model: packet reordering and jitter
(each direction is a FIFO with a fixed delay), ECN, MTU/fragmentation issues (all links
share one MTU, 9000 by default: a 1500-byte MTU would need six times the packets per second
from one Python process on a shared 2-core machine, and at the rates of bench/wan.py the
emulator would become the bottleneck), and cross traffic from outside the run. When this
process falls behind (CPU contention) packets leave late; `stats` reports how late.

Control: a Unix socket (SPEC "control") takes one JSON line per connection and answers one:
  {"op": "stats"}                                       per-link counters, lateness
  {"op": "partition", "a": [sites], "b": [sites]}       drop everything between the groups
  {"op": "heal"}                                        end every partition
  {"op": "link", "site": S, "up": bool, "dir": "both"}  cut or restore S's link (up/down/both)
  {"op": "alias", "site": S, "address": A}              S also owns address A (a second IP)
  {"op": "unalias", "address": A}                       nobody owns A any more
  {"op": "set", "site": S, "delay_ms": .., "loss": .., "up_mbps": .., "down_mbps": ..}
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.wan.link import Direction, Faults, buffer_for, ipv4_dst

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MBIT = 1_000_000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def attach(fd_name: str, ns: str, address: str, mtu: int) -> None:
    """Move TUN `fd_name` into namespace `ns` as wan0 with `address`, up, routing 10.77.0.0/16."""
    ip("link", "set", fd_name, "netns", ns)
    ip("-n", ns, "link", "set", fd_name, "name", "wan0")
    ip("-n", ns, "link", "set", "wan0", "mtu", str(mtu), "txqueuelen", "4000", "up")
    ip("-n", ns, "addr", "add", f"{address}/16", "dev", "wan0")


class Link:
    def __init__(self, spec: dict):
        self.name = spec["name"]
        self.up = Direction(spec["up_mbps"] * MBIT, spec["delay_ms"] / 1000, spec["loss"],
                            buffer_for(spec["up_mbps"] * MBIT))
        self.down = Direction(spec["down_mbps"] * MBIT, spec["delay_ms"] / 1000, spec["loss"],
                              buffer_for(spec["down_mbps"] * MBIT))
        self.fd = -1

    def set(self, **kw) -> None:
        for d, key in ((self.up, "up_mbps"), (self.down, "down_mbps")):
            if key in kw:
                d.rate_bps = float(kw[key]) * MBIT
                d.buffer_bytes = buffer_for(d.rate_bps)
        for d in (self.up, self.down):
            if "delay_ms" in kw:
                d.delay_s = float(kw["delay_ms"]) / 1000
            if "loss" in kw:
                d.loss = float(kw["loss"])


class Internet:
    def __init__(self, spec: dict):
        self.spec = spec
        self.links = {s["name"]: Link(s) for s in spec["sites"]}
        self.owner = {socket.inet_aton(s["address"]): s["name"] for s in spec["sites"]}
        self.by_fd: dict[int, Link] = {}
        self.faults = Faults()
        self.rng = random.Random(spec.get("seed", 0))
        self.heap: list = []
        self.seq = 0
        self.unrouted = 0
        self.partitioned = 0
        self.late_max = 0.0
        self.late_n = 0
        self.late_over_5ms = 0

    def build(self) -> None:
        tag = self.spec["tag"]
        for i, s in enumerate(self.spec["sites"]):
            name = f"wt{tag}_{i}"
            link = self.links[s["name"]]
            link.fd = open_tun(name)
            attach(name, s["ns"], s["address"], self.spec["mtu"])
            self.by_fd[link.fd] = link

    # -- the data plane -------------------------------------------------------------------------
    def _push(self, t: float, kind: int, target, pkt: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, target, pkt))

    def on_packet(self, src: Link, pkt: bytes, now: float) -> None:
        dst_ip = ipv4_dst(pkt)
        dst = self.owner.get(dst_ip) if dst_ip is not None else None
        if dst is None or dst == src.name:
            self.unrouted += 1
            return
        if not self.faults.allows(src.name, dst):
            self.partitioned += 1
            return
        t = src.up.admit(now, len(pkt), self.rng.random())
        if t is not None:
            self._push(t, 0, self.links[dst], pkt)

    def on_event(self, t: float, kind: int, link: Link, pkt: bytes, now: float) -> None:
        if kind == 0:   # reached the core: onto the destination's downlink
            t2 = link.down.admit(t, len(pkt), self.rng.random())
            if t2 is not None:
                self._push(t2, 1, link, pkt)
            return
        late = now - t
        self.late_n += 1
        self.late_max = max(self.late_max, late)
        if late > 0.005:
            self.late_over_5ms += 1
        try:
            os.write(link.fd, pkt)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL, errno.EBADF):
                raise

    def run(self, control_path: str) -> None:
        ep = select.epoll()
        for fd in self.by_fd:
            ep.register(fd, select.EPOLLIN)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(control_path):
            os.unlink(control_path)
        ctl.bind(control_path)
        ctl.listen(16)
        ctl.setblocking(False)
        ep.register(ctl.fileno(), select.EPOLLIN)
        print("ready", flush=True)
        heap = self.heap
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                t, _, kind, link, pkt = heapq.heappop(heap)
                self.on_event(t, kind, link, pkt, now)
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else 1.0
            for fd, _ in ep.poll(timeout):
                if fd == ctl.fileno():
                    self._control(ctl)
                    continue
                src = self.by_fd[fd]
                for _ in range(64):   # bounded, so due deliveries are not starved by one busy link
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    self.on_packet(src, pkt, time.monotonic())

    # -- control --------------------------------------------------------------------------------
    def _control(self, ctl: socket.socket) -> None:
        try:
            conn, _ = ctl.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                reply = self.command(json.loads(data))
            except (ValueError, KeyError, OSError) as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def command(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "stats":
            return {"ok": True, "links": {n: {"up": l.up.stats(), "down": l.down.stats()} for n, l in self.links.items()},
                    "unrouted": self.unrouted, "partitioned": self.partitioned, "late_max_s": self.late_max,
                    "late_over_5ms": self.late_over_5ms, "delivered": self.late_n, "queued": len(self.heap)}
        if op == "partition":
            self.faults.partition(cmd["a"], cmd["b"])
        elif op == "heal":
            self.faults.heal()
        elif op == "link":
            link = self.links[cmd["site"]]
            which = cmd.get("dir", "both")
            for d in ([link.up] if which == "up" else [link.down] if which == "down" else [link.up, link.down]):
                d.up = bool(cmd["up"])
        elif op == "alias":
            if cmd["site"] not in self.links:
                raise KeyError(cmd["site"])
            self.owner[socket.inet_aton(cmd["address"])] = cmd["site"]
        elif op == "unalias":
            self.owner.pop(socket.inet_aton(cmd["address"]), None)
        elif op == "set":
            self.links[cmd["site"]].set(**{k: v for k, v in cmd.items() if k not in ("op", "site")})
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    net = Internet(spec)
    net.build()
    net.run(spec["control"])


if __name__ == "__main__":
    main()
