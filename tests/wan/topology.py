"""A small internet described as data: sites, their access links, and what the links bound.

A `Topology` lists `Site`s: one operator site (coordinator, trainer with its shardcast origin,
verifier), a few region sites (a relay each) and the worker sites; a worker with `nat` set sits
behind that NAT site (masquerade, tests.wan.netns): it has a private address that the core
does not route, so it can dial out but cannot be dialled, and it shares its NAT's access link.
Every other site owns an address in 10.77.0.0/16 and one access link of the emulator
(tests.wan.link): uplink/downlink rate, one-way delay, loss. The path A -> B takes
delay(A) + delay(B); the round trip twice that.

`standard()` builds the topology of bench/wan.py and the WAN tests: rates from the issue
(origin 1 Gbit/s, relays 400 Mbit/s, workers 50-200 Mbit/s down, a fifth of that up, home
links), workers' round trips to the operator spread over 20-300 ms. `broadcast_bound()` is
the lower bound on the time until every worker holds a checkpoint, from link rates alone.
Pure data and arithmetic: no root, no namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

NET = "10.77"          # every public address of the simulated internet is 10.77.x.y
MBIT = 1_000_000


@dataclass(frozen=True)
class Site:
    name: str                 # also the role's name in the swarm plan (worker-3, region-a, ...)
    kind: str                 # operator | region | worker | nat
    up_mbps: float = 100.0
    down_mbps: float = 100.0
    delay_ms: float = 5.0     # one-way delay between this site and the core
    loss: float = 0.0         # per-packet loss on each direction of its link
    nat: str = ""             # worker behind this NAT site (no link of its own)
    address: str = ""         # filled by Topology: 10.77.0.N, or 192.168.N.2 behind a NAT

    @property
    def behind_nat(self) -> bool:
        return bool(self.nat)


@dataclass
class Topology:
    sites: list[Site]
    mtu: int = 9000            # of every TUN link (see tests.wan.internet for why not 1500)
    names: dict[str, str] = field(default_factory=dict)   # host name -> site name (/etc/hosts)

    def __post_init__(self) -> None:
        placed, nat_index = [], 0
        public = 0
        for s in self.sites:
            if s.nat:
                nat_index += 1
                placed.append(replace(s, address=f"192.168.{nat_index}.2"))
            else:
                public += 1
                placed.append(replace(s, address=f"{NET}.0.{public + 1}"))
        self.sites = placed
        names = {s.name for s in self.sites}
        for s in self.sites:
            if s.nat and (s.nat not in names or self.site(s.nat).kind != "nat"):
                raise ValueError(f"worker {s.name} is behind {s.nat!r}, which is not a NAT site of this topology")

    # -- lookups -------------------------------------------------------------------------------
    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def of_kind(self, kind: str) -> list[Site]:
        return [s for s in self.sites if s.kind == kind]

    @property
    def operator(self) -> Site:
        return self.of_kind("operator")[0]

    @property
    def regions(self) -> list[Site]:
        return self.of_kind("region")

    @property
    def workers(self) -> list[Site]:
        return self.of_kind("worker")

    def linked(self) -> list[Site]:
        """Sites with an access link of their own (everything but workers behind a NAT)."""
        return [s for s in self.sites if not s.nat]

    def link_of(self, name: str) -> Site:
        """The site whose access link carries `name`'s traffic (its NAT, if it has one)."""
        s = self.site(name)
        return self.site(s.nat) if s.nat else s

    def rtt_ms(self, a: str, b: str) -> float:
        """Round trip between two sites from propagation delays alone (no queueing, no serialisation)."""
        la, lb = self.link_of(a), self.link_of(b)
        return 0.0 if la.name == lb.name else 2 * (la.delay_ms + lb.delay_ms)

    def with_loss(self, loss: float) -> "Topology":
        return Topology([replace(s, loss=loss if not s.nat else 0.0) for s in self._unplaced()], self.mtu,
                        dict(self.names))

    def scaled(self, factor: float) -> "Topology":
        """Every rate times `factor` (the delays stay)."""
        return Topology([replace(s, up_mbps=s.up_mbps * factor, down_mbps=s.down_mbps * factor)
                         for s in self._unplaced()], self.mtu, dict(self.names))

    def _unplaced(self) -> list[Site]:
        return [replace(s, address="") for s in self.sites]


def standard(workers: int = 12, regions: int = 2, nat_workers: int = 2, *, rtt_ms: tuple[float, float] = (20, 300),
             loss: float = 0.0, origin_mbps: float = 1000, relay_mbps: float = 400,
             worker_mbps: tuple[float, float] = (50, 200), uplink_share: float = 0.2, mtu: int = 9000) -> Topology:
    """The operator (1 ms from the core), `regions` relays (10 ms), `workers` workers whose round
    trips to the operator spread evenly over `rtt_ms` and whose downlinks spread over
    `worker_mbps` (uplinks `uplink_share` of that: home links), the last `nat_workers` of them
    each behind a home router of its own (a NAT site `home-N` that carries the worker's link)."""
    op_delay = 1.0
    sites = [Site("operator", "operator", up_mbps=origin_mbps, down_mbps=origin_mbps, delay_ms=op_delay, loss=loss)]
    for r in range(regions):
        sites.append(Site(f"region-{chr(ord('a') + r)}", "region", up_mbps=relay_mbps, down_mbps=relay_mbps,
                          delay_ms=10.0, loss=loss))
    lo, hi = rtt_ms
    wlo, whi = worker_mbps
    for i in range(workers):
        frac = i / max(1, workers - 1)
        delay = max(0.5, (lo + (hi - lo) * frac) / 2 - op_delay)
        down = wlo + (whi - wlo) * ((i * 7) % workers) / max(1, workers - 1)   # rates not sorted by delay
        link = dict(up_mbps=down * uplink_share, down_mbps=down, delay_ms=delay, loss=loss)
        if i >= workers - nat_workers:
            sites.append(Site(f"home-{i + 1}", "nat", **link))
            sites.append(Site(f"worker-{i + 1}", "worker", nat=f"home-{i + 1}"))
        else:
            sites.append(Site(f"worker-{i + 1}", "worker", **link))
    return Topology(sites, mtu=mtu, names={"coordinator.wan": "operator", "origin.wan": "operator"})


# -- what the links allow --------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    seconds: float
    limit: str                 # which constraint sets it
    terms: dict[str, float]    # every constraint's time (seconds)


def broadcast_bound(topo: Topology, size_bytes: int, *, peers: bool = False, clients: list[str] | None = None) -> Bound:
    """Lower bound on the time from publish until every client (default: every worker) holds a
    checkpoint of `size_bytes`, from link rates alone (no latency, no protocol overhead):

    - the origin must send a copy to every relay: regions x size / origin uplink (with peers, at
      least one copy: size / origin uplink);
    - every relay must receive a copy: size / relay downlink;
    - relays' uplinks together must deliver a copy to every client: clients x size / sum of relay
      uplinks (with peers, the clients' uplinks help: / (relays' + clients' uplinks), and a
      client cannot serve itself: at least one copy comes from a relay);
    - every client must receive a copy: size / its downlink (behind a NAT, the NAT's downlink
      is shared: clients behind it x size / its downlink).

    A lower bound: any schedule needs at least the largest of these."""
    bits = size_bytes * 8
    names = clients if clients is not None else [w.name for w in topo.workers]
    op = topo.operator
    regions = topo.regions
    terms: dict[str, float] = {}
    copies_from_origin = 1 if peers else len(regions)
    terms["origin uplink"] = copies_from_origin * bits / (op.up_mbps * MBIT)
    for r in regions:
        terms[f"{r.name} downlink"] = bits / (min(r.down_mbps, op.up_mbps) * MBIT)
    relay_up = sum(r.up_mbps for r in regions) * MBIT
    client_links = {}
    for n in names:
        link = topo.link_of(n)
        client_links.setdefault(link.name, []).append(n)
    peer_up = sum(topo.site(link).up_mbps for link in client_links) * MBIT if peers else 0.0
    terms["relay uplinks" + (" + client uplinks" if peers else "")] = len(names) * bits / (relay_up + peer_up)
    for link, behind in client_links.items():
        terms[f"{link} downlink"] = len(behind) * bits / (topo.site(link).down_mbps * MBIT)
    limit = max(terms, key=terms.get)
    return Bound(terms[limit], limit, terms)
