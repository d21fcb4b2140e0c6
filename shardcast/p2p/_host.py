"""The trio side of a P2PNode: one py-libp2p host, gossipsub on the run's topic, and the
shard-exchange stream protocol. Everything here runs inside the node's own trio thread;
`shardcast.p2p.node` is the only caller and the bridge to other threads.

- The host's key is the role's protocol KeyPair (same Ed25519 seed), so its peer id is the
  id protocol.identity derives; TCP + Noise + Yamux, as py-libp2p builds by default.
- The topic `swarmrl/<run_id>/announce/1` has the `Gate` as its validator: rejected messages
  are neither delivered nor forwarded. Message ids are content-addressed (sha256 of the data),
  so the same envelope re-published by anyone is a duplicate gossipsub drops itself; the
  validation cache is kept to a second so no admitted message skips the gate on re-arrival.
  The validator itself applies what it admits to the view and hands what changed it to the
  node (py-libp2p's subscription channel drops when full: nothing admitted depends on it).
  A direct peer that forwards FORGED_STRIKES messages the gate calls forged (a signature that
  fails for the key it names: no honest peer forwards one) is blacklisted by the pubsub (its
  messages dropped unchecked; bootstrap peers excepted): forgeries naming a trusted key cost
  ~7 ms of CPU a MiB to check, at up to max_messages_per_s a peer.
- Inbound connections are counted from what is live (py-libp2p's limiter never gave a
  token back: the 251st inbound connection of a node's life was refused), each one's handler
  ends when it closes (py-libp2p's waited for the swarm to stop), and once the node holds
  half its cap an address holding MAX_INBOUND_PER_ADDRESS gets no more
  (`shardcast.p2p.inbound`).
- Loops: receive (drains the subscription), bootstrap (re-dial unconnected bootstrap peers),
  adverts (re-seal and repeat standing adverts), dial (a few advertised peers at once, so the
  mesh does not hang on the bootstrap peer alone).
- Dials of peers that adverts named (the dial loop, requests) are budgeted per address and
  per host across peer ids (DIALS_PER_ADDRESS, DIALS_PER_HOST per DIAL_BACKOFF_S; a dial that
  reaches its peer is not counted): keys are free, so adverts of many keys can all name one
  victim's address. A peer out of budget is not dialled (DialDeferred, no strike). py-libp2p's
  own retries are off: one TCP attempt per address a dial; nor do its auto-connector (which
  re-dialled what the peerstore learned) or gossipsub peer exchange dial anything.
- Such dials go to one address at a time (at most MAX_ADDRS_DIALLED of an advert's), each
  counted against that address and its host alone (py-libp2p dials one of the addresses it
  is given; every address was charged). A handshake proves who listens at an address (the
  peer dialled, or another key: the advert lied), and that is remembered OWNER_TTL_S: the
  owner is dialled there without a budget, other keys naming the address are not dialled.
  So throw-away keys naming an honest peer's address cannot spend that address's budget and
  keep the honest peer undialled (two such dials did, for 60 s). A dial the host refused
  (nothing listens on that port: its kernel answered, at no cost to it) is charged to the
  address alone, so keys naming closed ports of an honest peer's host cannot spend the
  host's budget either.
- Stream handler: serves manifests and shards from the node's ShardStore, a bounded number
  at once, reading disk in a worker thread. A stream waits for its request (REQUEST_READ_
  TIMEOUT_S) in a table of its own (MAX_WAITING_PER_SLOT per serving slot), and takes a
  serving slot only once its request is read; a body written must keep up `min_rate_bps`
  (`Pace`, as a reply read must); slots are shared among peers (`shardcast.p2p.slots`: at
  most MAX_SERVES_PER_PEER each, and a peer holding none takes one from a peer holding that
  many). Two fresh keys held all 4 slots of a holder: silent streams for 10 s at a time,
  requests never read for the whole 60 s request deadline. Slots are also shared among the
  peers' IP addresses (`remote_address`: the TCP peer address, keyed as the HTTP services'
  per-address limits are, `protocol.guard.address_key`): in a full table an address holds
  MAX_SERVES_PER_ADDRESS against another that wants one, so keys holding one slot each, as
  many as the table has, no longer keep every peer of every other address out.
- Asking (`request`): besides the request deadline, the reply's head must come within
  `rate_window_s` and its body keep up `min_rate_bps` (`Pace`), so a peer that drips is
  dropped within about a window and the shard asked of another.

libp2p and transport errors are translated to PeerRequestFailed at this boundary.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections import OrderedDict
from typing import Callable

import multiaddr
import multiaddr.exceptions
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.config import RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, get_content_addressed_msg_id
from libp2p.pubsub.utils import safe_bytes_from_hex
from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey
from libp2p.tools.anyio_service import background_trio_service

from protocol.envelope import Envelope
from protocol.guard import address_key
from protocol.identity import KeyPair
from shardcast.p2p import wire
from shardcast.p2p.addresses import dial_host
from shardcast.p2p.announcements import UNTRUSTED_KINDS, Announcement, Gate, encode
from shardcast.p2p.config import P2PConfig
from shardcast.p2p.errors import DialDeferred, PeerBusy, PeerRequestFailed, Rejected
from shardcast.p2p.inbound import LiveInbound
from shardcast.p2p.slots import Slots
from shardcast.p2p.store import ShardStore
from shardcast.p2p.view import Counters, SwarmView

# py-libp2p's yamux answers every read with a WINDOW_UPDATE frame by default (another Noise-
# encrypted write per gossip message received, a tenth of a worker's p2p CPU in bench/learning);
# without it the window is topped up once half of it is consumed, as yamux specifies. Read
# from the environment at each read, so this must be set before any stream exists; an
# operator's own PY_YAMUX_RELEASE_ON_READ wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
log = logging.getLogger("shardcast.p2p")
MAX_TRUSTED_IDS = 1024
FORGED_STRIKES = 3      # forged messages a direct peer may forward before it is blacklisted
MAX_BLOCKED = 1024      # forwarders blacklisted at once (the oldest let back first)
MAX_SERVES_PER_PEER = 2
MAX_SERVES_PER_ADDRESS = 4  # an address's share of a full table (keys are free; two peers' worth behind a NAT)
MAX_INBOUND_PER_ADDRESS = 16  # inbound connections one address holds once the node holds half its cap
MAX_WAITING_PER_SLOT = 4  # streams that may wait for their request, per serving slot
REQUEST_READ_TIMEOUT_S = 5.0  # a request is one small frame, written as soon as the stream opens
DIAL_BACKOFF_S = 60.0   # an advertised peer that could not be dialled is not dialled again this long
MAX_DIAL_FAILED = 4096
DIALS_PER_ADDRESS = 2   # dials of advertised peers to one address in flight or failed per DIAL_BACKOFF_S,
DIALS_PER_HOST = 16     # ... and to one host (IP or name), whatever the ports and peer ids: keys are free,
                        # and adverts of many keys naming one victim's address made every node dial it
                        # once per key (a dial that reaches its peer is not counted)
MAX_DIAL_TARGETS = 4096
IWANT_RETRANSMISSIONS = 3  # times one cached gossip message is sent to one peer that asks for it
MAX_IWANT_IDS = 512        # ids answered of one IWANT request
MAX_IWANT_TRACKED = 16384  # (peer, message) pairs whose retransmissions are counted
MAX_ADDRS_DIALLED = 3   # addresses of one advertised peer tried in one dial, one at a time
OWNER_TTL_S = DIAL_BACKOFF_S  # how long a handshake's proof of who listens at an address is used
_MISMATCH = re.compile(r"remote_peer_id_from_pubkey=(\w+)")
# What the network side can raise at this boundary; translated, never swallowed silently.
NET_ERRORS = (BaseLibp2pError, multiaddr.exceptions.Error, ValueError, OSError,
              trio.BrokenResourceError, trio.ClosedResourceError)


def topic_for(run_id: str) -> str:
    return f"swarmrl/{run_id}/announce/1"


class SwarmHost:
    """Owned by one node; every coroutine runs in that node's trio thread."""

    def __init__(self, cfg: P2PConfig, key: KeyPair, run_id: str, gate: Gate, view: SwarmView,
                 store: ShardStore | None, deliver: Callable[[Announcement], None],
                 standing: Callable[[], list[Envelope]], counters: "Counters"):
        self.cfg, self.key, self.run_id = cfg, key, run_id
        self.gate, self.view, self.store = gate, view, store
        self.deliver, self.standing, self.counters = deliver, standing, counters
        self.topic = topic_for(run_id)
        self._trusted: OrderedDict[bytes, None] = OrderedDict()  # ids of admitted versions and notices
        self._forged: OrderedDict[ID, int] = OrderedDict()  # forwarder -> forged messages it sent
        self._blocked: OrderedDict[ID, None] = OrderedDict()
        self._serving = Slots(cfg.max_concurrent_serves, MAX_SERVES_PER_PEER,  # requests being answered
                              MAX_SERVES_PER_ADDRESS)
        self._waiting = Slots(MAX_WAITING_PER_SLOT * cfg.max_concurrent_serves, MAX_SERVES_PER_PEER,
                              MAX_SERVES_PER_ADDRESS)
        self._kick = trio.Event()
        self._unreachable: set[str] = set()
        self._dial_failed: OrderedDict[str, float] = OrderedDict()  # peer id -> monotonic time
        self._dials: OrderedDict[str, list[float]] = OrderedDict()  # address or host -> dials counted
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()  # address -> (peer id proven there, when)
        self.host = None
        self.pubsub = None

    # -- life cycle -----------------------------------------------------------------------
    async def run(self, ready: Callable[[list[str]], None]) -> None:
        cfg = self.cfg
        self.host = new_host(key_pair=create_new_key_pair(self.key.seed))
        # One TCP attempt per address a dial: py-libp2p's swarm retries each failed one 3 times
        # (0.1-0.4 s apart), so each dial of an address an advert named cost its host up to four
        # connections. This layer paces its own redials (bootstrap_interval_s, the dial rounds,
        # DIAL_BACKOFF_S, DIALS_PER_HOST; a request goes to another peer).
        network = self.host.get_network()
        if hasattr(network, "retry_config"):
            network.retry_config = RetryConfig(max_retries=0)
        # Nor does py-libp2p's auto-connector dial for it: below 50 connections (always, here)
        # it dialled up to 32 peers of the peerstore every 10 s, which keeps for 120 s every
        # address this node dialled (throw-away keys naming a victim's address included) and
        # what peers say of themselves, past every dial budget.
        connector = getattr(network, "auto_connector", None)
        if connector is not None:
            connector.maybe_connect = _no_auto_dials
        # Inbound connections are admitted by what is live, shared among addresses
        # (`shardcast.p2p.inbound`): py-libp2p's own limiter spent a token for good on each.
        limiter = getattr(network, "_inbound_limiter", None)
        if limiter is not None and hasattr(network, "upgrade_inbound_raw_conn"):
            inbound = LiveInbound(network, int(limiter.total_tokens), MAX_INBOUND_PER_ADDRESS, remote_address)
            network._inbound_limiter = inbound
            network.upgrade_inbound_raw_conn = inbound.gate(network.upgrade_inbound_raw_conn)
            if hasattr(network, "_handle_inbound_connection"):
                network._handle_inbound_connection = inbound.handle(network._handle_inbound_connection)
        router = _SwarmGossipSub(
            self._is_trusted, protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=cfg.gossip_degree,
            degree_low=max(1, cfg.gossip_degree - 2), degree_high=cfg.gossip_degree * 2,
            heartbeat_interval=cfg.heartbeat_interval_s, heartbeat_initial_delay=0.1,
            max_messages_per_topic_per_second=cfg.max_messages_per_s,
        )
        self.pubsub = Pubsub(self.host, router, msg_id_constructor=get_content_addressed_msg_id,
                             seen_ttl=int(2 * cfg.max_skew_s) + 1, validation_cache_ttl=1)
        self.pubsub.set_topic_validator(self.topic, self._validate, False)
        self.host.set_stream_handler(wire.PROTOCOL_ID, self._serve)
        listen = multiaddr.Multiaddr(f"/ip4/{cfg.listen_host}/tcp/{cfg.listen_port}")
        async with self.host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
            async with background_trio_service(self.pubsub), background_trio_service(router):
                await self.pubsub.wait_until_ready()
                sub = await self.pubsub.subscribe(self.topic)
                nursery.start_soon(self._receive_loop, sub)
                nursery.start_soon(self._bootstrap_loop)
                nursery.start_soon(self._advert_loop)
                nursery.start_soon(self._dial_loop)
                addrs = self.multiaddrs()
                if not addrs:  # py-libp2p logs a failed listen and goes on; we refuse to
                    raise OSError(f"not listening on {listen} (address in use or not available)")
                ready(addrs)
                await trio.sleep_forever()

    def multiaddrs(self) -> list[str]:
        """Where to dial this host, each ending in /p2p/<peer id>."""
        pid = self.host.get_id().to_base58()
        out = []
        for a in self.host.get_addrs():
            text = str(a)
            if self.cfg.announce_host:
                text = text.replace(f"/ip4/{self.cfg.listen_host}/", f"/ip4/{self.cfg.announce_host}/", 1)
            out.append(text if "/p2p/" in text else f"{text}/p2p/{pid}")
        return out

    def kick(self) -> None:
        """Repeat standing adverts now (a new version held, a relay advertised)."""
        self._kick.set()

    # -- gossip -----------------------------------------------------------------------------
    def _validate(self, forwarder: ID, msg) -> bool:
        now = time.time()
        try:
            ann = self.gate.admit(msg.data, now=now)
        except Rejected as exc:
            self.counters.inc(f"rejected_{exc.reason}")
            log.debug("dropped an announcement from %s: %s", forwarder, exc)
            if exc.forged:
                self._strike_forwarder(forwarder)
            return False
        if ann.kind not in UNTRUSTED_KINDS:
            self._trusted[self.pubsub.get_message_id(msg)] = None
            while len(self._trusted) > MAX_TRUSTED_IDS:
                self._trusted.popitem(last=False)
        # Applied here, once admitted: py-libp2p hands admitted messages to the subscription
        # through a channel of 32 that drops when full (after marking them seen), and one RPC
        # of many admitted adverts fills it at once; what arrives through it is not needed.
        self.counters.inc("admitted")
        if self.view.apply(ann, now=now):  # repeats of standing adverts are not news
            self.deliver(ann)
        return True

    def _strike_forwarder(self, forwarder: ID) -> None:
        if forwarder == self.host.get_id() or forwarder in self._blocked or any(
                forwarder.to_base58() in a for a in self.cfg.bootstrap):
            return
        n = self._forged.pop(forwarder, 0) + 1
        self._forged[forwarder] = n
        while len(self._forged) > MAX_DIAL_FAILED:
            self._forged.popitem(last=False)
        if n < FORGED_STRIKES:
            return
        del self._forged[forwarder]
        log.warning("p2p: blacklisting peer %s: it forwarded %d messages with forged signatures", forwarder, n)
        self.counters.inc("forwarders_blocked")
        self._blocked[forwarder] = None
        self.pubsub.add_to_blacklist(forwarder)
        while len(self._blocked) > MAX_BLOCKED:
            self.pubsub.remove_from_blacklist(self._blocked.popitem(last=False)[0])

    def _is_trusted(self, msg) -> bool:
        """Whether the gate admitted `msg` as signed by the operator or coordinator key."""
        return self.pubsub is not None and self.pubsub.get_message_id(msg) in self._trusted

    async def _receive_loop(self, sub) -> None:
        while True:  # keeps the subscription's channel empty: the validator applied each message
            await sub.get()

    async def publish(self, env: Envelope) -> None:
        await self.pubsub.publish(self.topic, encode(env))

    async def _bootstrap_loop(self) -> None:
        me = self.key.peer_id
        while True:
            for addr in self.cfg.bootstrap:
                try:
                    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
                except NET_ERRORS as exc:
                    self._warn_once(addr, f"bootstrap address {addr} is not a /p2p/ multiaddr: {exc}")
                    continue
                if info.peer_id.to_base58() == me or info.peer_id in self.host.get_connected_peers():
                    continue
                if not await self._connect(info):
                    self._warn_once(addr, f"cannot reach bootstrap peer {addr} (retrying every "
                                          f"{self.cfg.bootstrap_interval_s:.0f} s; HTTP keeps working meanwhile)")
                    continue
                self._unreachable.discard(addr)
                log.info("p2p: connected to bootstrap peer %s", info.peer_id)
                try:  # repeat standing adverts once the peer has told us it is on the topic
                    await self.pubsub.wait_for_subscription(info.peer_id, self.topic, timeout=2.0)
                except trio.TooSlowError:
                    pass  # repeat anyway; the periodic repeat covers a slow peer
                self.kick()
            await trio.sleep(self.cfg.bootstrap_interval_s)

    def _warn_once(self, addr: str, message: str) -> None:
        if addr not in self._unreachable:
            self._unreachable.add(addr)
            log.warning("p2p: %s", message)

    async def _connect(self, info: Libp2pPeerInfo, budget: bool = False) -> bool:
        """Connect to `info` (at once when connected already). `budget`: the peer and its
        addresses came from an advert anyone may sign, so the dial is counted against the
        budget of each address and host it names (`_spend_dial`); DialDeferred when one of
        them is spent."""
        if budget and info.peer_id not in self.host.get_connected_peers():
            return await self._connect_advertised(info)
        return (await self._dial(info)) is None

    async def _dial(self, info: Libp2pPeerInfo, timeout_s: float | None = None) -> BaseException | None:
        """One connect (within `timeout_s`, default the connect timeout); None when connected,
        else what failed."""
        # py-libp2p's swarm refuses to dial a peer for 60 s after all its addresses failed once
        # (a "negative cache"); this layer paces its own redials (bootstrap_interval_s, peer
        # strikes), so a bootstrap peer that starts after us is reached at the next attempt.
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        try:
            with trio.fail_after(self._connect_timeout_s() if timeout_s is None else timeout_s):
                await self.host.connect(info)
        except (*NET_ERRORS, trio.TooSlowError) as exc:
            log.debug("p2p: could not connect to %s: %s", info.peer_id, exc)
            return exc
        return None

    def _connect_timeout_s(self) -> float:
        return min(10.0, self.cfg.request_timeout_s)

    async def _connect_advertised(self, info: Libp2pPeerInfo) -> bool:
        """Dial a peer an advert named, one address at a time (see the module docstring),
        all of them within one connect timeout."""
        pid, deferred, tried = info.peer_id.to_base58(), False, 0
        until = trio.current_time() + self._connect_timeout_s()
        for maddr in _unique(info.addrs):
            if tried >= MAX_ADDRS_DIALLED or trio.current_time() >= until:
                break
            addr = _addr_key(maddr)
            owner = self._owner(addr)
            if owner is not None and owner != pid:
                continue  # another key proved it listens there: this advert lied
            targets = {} if owner == pid else _dial_targets([maddr])
            if not self._spend_dial(targets):
                deferred = True
                continue
            tried += 1
            # exactly this address: py-libp2p dials what its peerstore holds for the peer
            self.host.get_peerstore().clear_addrs(info.peer_id)
            failed = await self._dial(Libp2pPeerInfo(info.peer_id, [maddr]), until - trio.current_time())
            if failed is None:
                self._refund_dial(targets)  # a peer answered there: no victim of a flood of adverts
                self._set_owner(addr, pid)
                return True
            proven = _proven_instead(failed)
            if proven is not None:
                self._set_owner(addr, proven)
            elif owner == pid:
                self._owners.pop(addr, None)  # not there any more
            if any(isinstance(e, ConnectionRefusedError) for e in _causes(failed)):
                # refused by the host's kernel: no cost to it, and keys naming its closed ports
                # would spend the host's budget for the peers that do listen there
                self._refund_dial({k: n for k, n in targets.items() if k.startswith("host ")})
        if deferred and not tried:
            raise DialDeferred(f"peer {info.peer_id}: not dialled, its address is out of dial budget "
                               f"({DIALS_PER_ADDRESS} per address, {DIALS_PER_HOST} per host, per "
                               f"{DIAL_BACKOFF_S:.0f} s)")
        return False

    def _owner(self, addr: str) -> str | None:
        hit = self._owners.get(addr)
        if hit is None:
            return None
        if time.monotonic() - hit[1] >= OWNER_TTL_S:
            del self._owners[addr]
            return None
        return hit[0]

    def _set_owner(self, addr: str, peer_id: str) -> None:
        self._owners.pop(addr, None)
        self._owners[addr] = (peer_id, time.monotonic())
        while len(self._owners) > MAX_DIAL_TARGETS:
            self._owners.popitem(last=False)

    def _dialable(self, peer_id: str, addrs, now: float) -> str | None:
        """The first address of `addrs` a dial of `peer_id` would try now (not another key's,
        within its budget), None when there is none."""
        for maddr in _unique(addrs):
            addr = _addr_key(maddr)
            owner = self._owner(addr)
            if owner == peer_id or (owner is None and self._dial_budget_left(_dial_targets([maddr]), now)):
                return addr
        return None

    def _dial_budget_left(self, targets: dict[str, int], now: float) -> bool:
        for key, limit in targets.items():
            times = self._dials.get(key)
            if times is not None:
                times[:] = [t for t in times if now - t < DIAL_BACKOFF_S]
                if len(times) >= limit:
                    return False
        return True

    def _spend_dial(self, targets: dict[str, int]) -> bool:
        """Count one dial against each of `targets` (address or host -> its budget); False
        (nothing counted) when one of them had its budget of dials in flight or failed in the
        last DIAL_BACKOFF_S."""
        now = time.monotonic()
        if not self._dial_budget_left(targets, now):
            return False
        for key in targets:
            self._dials[key] = [*self._dials.pop(key, []), now]
        while len(self._dials) > MAX_DIAL_TARGETS:
            self._dials.popitem(last=False)
        return True

    def _refund_dial(self, targets: dict[str, int]) -> None:
        for key in targets:
            times = self._dials.get(key)
            if times:
                times.pop()

    async def _advert_loop(self) -> None:
        # Adverts anyone may sign (have, relay) are paced to the rate every peer's gate admits
        # from one signer (rate_per_s): a new version every second would otherwise re-send
        # them that often, and peers would pay to receive, decrypt and check each one only to
        # drop most as rate-limited. Trusted announcements (versions, notices) go at once.
        # The adverts skipped meanwhile are sent, re-sealed with what is current, when allowed.
        untrusted_after = 0.0  # trio clock
        while True:
            now = trio.current_time()
            held_back = sent = 0
            for env in self.standing():
                untrusted = env.kind in UNTRUSTED_KINDS
                if untrusted and now < untrusted_after:
                    held_back += 1
                    continue
                try:
                    await self.publish(env)
                except NET_ERRORS as exc:
                    log.debug("p2p: publishing a standing advert failed: %s", exc)
                sent += untrusted
            if sent:
                untrusted_after = now + sent / self.cfg.rate_per_s
            wait = self.cfg.advert_interval_s
            if held_back:
                wait = min(wait, max(0.0, untrusted_after - trio.current_time()))
            with trio.move_on_after(wait):
                await self._kick.wait()
            self._kick = trio.Event()

    async def _dial_loop(self) -> None:
        # Its own task: a dial to an advertised address may take the whole connect timeout (a
        # hostile advert names a port that accepts and never speaks), and the advert loop must
        # keep repeating this node's standing adverts within their ttl meanwhile.
        while True:
            await self._dial_advertised()
            await trio.sleep(self.cfg.advert_interval_s)

    async def _dial_advertised(self) -> None:
        connected = set(self.host.get_connected_peers())
        if len(connected) >= self.cfg.max_dial_peers + len(self.cfg.bootstrap):
            return
        me, now = self.key.peer_id, time.monotonic()
        for pid in [p for p, t in self._dial_failed.items() if now - t >= DIAL_BACKOFF_S]:
            del self._dial_failed[pid]
        candidates = [p for p in self.view.peers(time.time())
                      if p.peer_id != me and p.peer_id not in self._dial_failed
                      and ID.from_base58(p.peer_id) not in connected]
        random.shuffle(candidates)
        # One peer per address a round, and none at an address or host out of dial budget: the
        # round's places go to other peers, not to a crowd of keys that all name one address.
        chosen, taken = [], set()
        for p in candidates:
            if len(chosen) >= self.cfg.max_dial_peers - len(connected):
                break
            addr = self._dialable(p.peer_id, p.addrs, now)
            if addr is None or addr in taken:
                continue
            taken.add(addr)
            chosen.append(p)
        async with trio.open_nursery() as nursery:  # at once: a round lasts one connect timeout at most
            for p in chosen:
                nursery.start_soon(self._dial_advertised_peer, p)

    async def _dial_advertised_peer(self, p) -> None:
        try:
            info = _peer_info(p.peer_id, p.addrs)
            ok = await self._connect(info, budget=True)
        except DialDeferred:
            return  # not dialled: asked again when the host's budget allows
        except NET_ERRORS:
            ok = False
        if not ok:  # not again for a while (bounded: the oldest failures are forgotten first)
            self._dial_failed.pop(p.peer_id, None)
            self._dial_failed[p.peer_id] = time.monotonic()
            while len(self._dial_failed) > MAX_DIAL_FAILED:
                self._dial_failed.popitem(last=False)

    # -- shard exchange: serving ------------------------------------------------------------
    async def _serve(self, stream) -> None:
        await self._serve_one(stream)

    async def _serve_one(self, stream) -> None:
        peer, address = _remote_peer(stream), remote_address(stream)
        req = await self._read_request(stream, peer, address)
        if req is None:
            return
        finished = False
        with trio.CancelScope() as scope:
            slot = self._serving.take(peer, address, trio.current_time(), scope.cancel)
            if slot is None:
                await self._reply_error(stream, "busy")
                return
            try:
                finished = await self._answer(stream, req, peer)
            finally:
                self._serving.release(slot, finished)
        if scope.cancelled_caught:
            self.counters.inc("serve_taken_back")
            log.debug("p2p: a transfer to %s gave its slot to a peer that held none", peer)
            await _reset(stream)

    async def _read_request(self, stream, peer: str | None, address: str | None) -> wire.ShardRequest | None:
        """The stream's request, read in the waiting table (no serving slot meanwhile); None
        when refused (busy), silent past REQUEST_READ_TIMEOUT_S, malformed or taken back."""
        with trio.CancelScope() as scope:
            slot = self._waiting.take(peer, address, trio.current_time(), scope.cancel)
            if slot is None:
                await self._reply_error(stream, "busy")
                return None
            try:
                with trio.fail_after(REQUEST_READ_TIMEOUT_S):
                    return wire.decode_request(await wire.read_frame(stream, StreamEOF))
            except (PeerRequestFailed, *NET_ERRORS, trio.TooSlowError) as exc:
                log.debug("p2p: no valid shard request from %s: %s", peer, exc)
            finally:
                self._waiting.release(slot)
        await _reset(stream)
        return None

    async def _answer(self, stream, req: wire.ShardRequest, peer: str | None) -> bool:
        """Serve one request; True when the whole reply was written."""
        try:
            with trio.fail_after(self.cfg.request_timeout_s):
                data = await self._lookup(req)
                if isinstance(data, str):
                    await self._reply_error(stream, data)
                    return False
                await wire.write_frame(stream, wire.encode_model(wire.ShardReply(ok=True, size=len(data))))
                await wire.write_body(stream, data, Pace(self.cfg.min_rate_bps, self.cfg.rate_window_s, str(peer)))
                self.counters.inc("served")
            await stream.close()
            return True
        except (PeerRequestFailed, *NET_ERRORS, trio.TooSlowError) as exc:
            log.debug("p2p: a shard request failed while serving: %s", exc)
            await _reset(stream)
            return False

    async def _lookup(self, req: wire.ShardRequest) -> bytes | str:
        if req.run_id != self.run_id:
            return "other-run"
        if self.store is None:
            return "serves-nothing"
        if req.op == "manifest":
            env = await trio.to_thread.run_sync(self.store.manifest_envelope, req.version)
            return "not-found" if env is None else env.model_dump_json().encode()
        data = await trio.to_thread.run_sync(self.store.read_shard, req.version, req.index)
        return "not-found" if data is None else data

    async def _reply_error(self, stream, error: str) -> None:
        try:
            await wire.write_frame(stream, wire.encode_model(wire.ShardReply(ok=False, error=error)))
            await stream.close()
        except NET_ERRORS:
            await _reset(stream)

    # -- shard exchange: asking -------------------------------------------------------------
    async def request(self, peer_id: str, addrs: tuple[str, ...], req: wire.ShardRequest,
                      max_size: int) -> bytes:
        """Ask one peer; the reply body, unverified (the caller checks it). Raises
        PeerRequestFailed on any failure, refusal or a reply larger than `max_size`."""
        stream = None
        try:
            with trio.fail_after(self.cfg.request_timeout_s):
                info = _peer_info(peer_id, addrs)
                if not await self._connect(info, budget=True):
                    raise PeerRequestFailed(f"cannot connect to peer {peer_id}")
                stream = await self.host.new_stream(info.peer_id, [wire.PROTOCOL_ID])
                await wire.write_frame(stream, wire.encode_model(req))
                with trio.fail_after(self.cfg.rate_window_s):
                    reply = wire.decode_reply(await wire.read_frame(stream, StreamEOF))
                if not reply.ok:
                    refused = PeerBusy if reply.error == "busy" else PeerRequestFailed
                    raise refused(f"peer {peer_id} refused: {reply.error}")
                if reply.size > max_size:
                    raise PeerRequestFailed(f"peer {peer_id} offers {reply.size} bytes, at most {max_size} expected")
                data = await wire.read_exactly(stream, reply.size, StreamEOF,
                                               pace=Pace(self.cfg.min_rate_bps, self.cfg.rate_window_s, peer_id))
            await stream.close()
            return data
        except trio.TooSlowError as exc:
            raise PeerRequestFailed(f"peer {peer_id} did not answer within {self.cfg.request_timeout_s:.0f} s") from exc
        except NET_ERRORS as exc:
            raise PeerRequestFailed(f"peer {peer_id}: {type(exc).__name__}: {exc}") from exc
        finally:
            if stream is not None and not _is_closed(stream):
                await _reset(stream)


class Pace:
    """The minimum rate of one reply body (or of a body served), as shardcast.transfer.MinRate
    is for a relay's shard: a leaky bucket that starts with `window_s` of credit, each byte buys
    1/min_bps s more, capped at `window_s` ahead (a burst cannot pay for a long stall). A read
    (write) not done when the credit runs out ends the exchange: `PeerRequestFailed`, and the
    shard is asked of another peer. Without it, a peer that dripped a shard held the asker for
    the whole request deadline (60 s)."""

    def __init__(self, min_bps: float, window_s: float, peer: str):
        self.min_bps, self.window_s, self.peer = min_bps, window_s, peer
        self.started = trio.current_time()
        self.until = self.started + window_s
        self.nbytes = 0

    def moved(self, n: int) -> None:
        self.nbytes += n
        self.until = min(trio.current_time() + self.window_s, self.until + n / self.min_bps)

    async def run(self, afn, *args):
        """`await afn(*args)` (one read or write) by the end of the credit."""
        with trio.move_on_at(self.until) as scope:
            return await afn(*args)
        if scope.cancelled_caught:
            took = trio.current_time() - self.started
            raise PeerRequestFailed(f"peer {self.peer}: {self.nbytes} bytes in {took:.1f} s, below the minimum "
                                    f"{self.min_bps:.0f} B/s")


class _SwarmGossipSub(GossipSub):
    """GossipSub whose per-forwarder spam gate (max_messages_per_s) never holds back what the
    gate admitted as signed by the operator or coordinator key (a version, a notice): those
    cannot be forged or replayed, while adverts any throw-away key may sign can fill a
    forwarder's budget, and a hub that relays such a flood would otherwise have its own
    version announcement dropped by every peer it reaches, never forwarded further.

    IWANT requests are answered once per id listed, each cached message at most
    IWANT_RETRANSMISSIONS times to one peer (go-libp2p's GossipRetransmission), at most
    MAX_IWANT_IDS ids a request: py-libp2p answered repeats too, as often as asked (10 IWANTs
    a second), and a 68 KB IWANT naming one 3.5 KB advert 2000 times had 7 MB queued for the
    asker (a cached version announcement with its manifest: 256 KiB a repeat).

    Peer exchange in a PRUNE is ignored: py-libp2p dialled up to 16 peers any PRUNE listed
    (signed records of free keys naming any address: a private one, a victim's port), past
    the dial budgets and the gate's address rules. This swarm sends none (do_px off) and
    finds peers through its adverts."""

    def __init__(self, trusted: Callable[[object], bool], **kwargs):
        super().__init__(**kwargs)
        self._trusted_msg = trusted
        self._iwant_sent: OrderedDict[tuple[ID, bytes], int] = OrderedDict()

    async def handle_iwant(self, iwant_msg, sender_peer_id: ID) -> None:
        wanted, seen = [], set()
        for wire_id in iwant_msg.messageIDs:
            mid = safe_bytes_from_hex(wire_id)
            if mid is None or mid in seen or self.mcache.get(mid) is None:
                continue
            seen.add(mid)
            key = (sender_peer_id, mid)
            sent = self._iwant_sent.pop(key, 0)
            self._iwant_sent[key] = sent + (sent < IWANT_RETRANSMISSIONS)
            if sent < IWANT_RETRANSMISSIONS:
                wanted.append(wire_id)
            if len(wanted) >= MAX_IWANT_IDS:
                break
        while len(self._iwant_sent) > MAX_IWANT_TRACKED:
            self._iwant_sent.popitem(last=False)
        if wanted:
            await super().handle_iwant(rpc_pb2.ControlIWant(messageIDs=wanted), sender_peer_id)

    async def _do_px(self, px_peers) -> None:
        return None

    def _check_spam_protection(self, peer_id: ID, msg) -> bool:
        if self._trusted_msg(msg):
            return True
        return super()._check_spam_protection(peer_id, msg)


async def _no_auto_dials() -> None:
    return None


def _peer_info(peer_id: str, addrs: tuple[str, ...]) -> Libp2pPeerInfo:
    maddrs = [multiaddr.Multiaddr(a.split("/p2p/")[0]) for a in addrs]
    return Libp2pPeerInfo(ID.from_base58(peer_id), maddrs)


def _dial_targets(addrs) -> dict[str, int]:
    """What dialling `addrs` (multiaddrs) costs: each address (without its /p2p/ part) and
    each host (/ip4|ip6|dns.../HOST), with its budget of dials per DIAL_BACKOFF_S. Hosts are
    spelt one way (`dial_host`): /ip6/::ffff:A.B.C.D is A.B.C.D, with its budget."""
    out: dict[str, int] = {}
    for a in addrs:
        out[_addr_key(a)] = DIALS_PER_ADDRESS
        out[f"host {_host_of(a)}"] = DIALS_PER_HOST
    return out


def _host_of(maddr) -> str:
    parts = str(maddr).split("/p2p/")[0].split("/")
    return dial_host(parts[1], parts[2]) if len(parts) > 2 else "/".join(parts)


def _addr_key(maddr) -> str:
    parts = str(maddr).split("/p2p/")[0].split("/")
    if len(parts) > 2:
        parts = ["", *dial_host(parts[1], parts[2]).split("/", 1), *parts[3:]]
    return f"addr {'/'.join(parts)}"


def _unique(addrs) -> list:
    out, seen = [], set()
    for a in addrs:
        key = _addr_key(a)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def _causes(exc: BaseException):
    """`exc` and every exception under it: causes, contexts, py-libp2p's MultiError.errors and
    exception groups' members (a failed dial nests the one that says why a few levels down)."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [x for name in ("errors", "exceptions")
                 for x in (lambda v: v if isinstance(v, (list, tuple)) else ())(getattr(e, name, None))]
        stack.extend([e.__cause__, e.__context__, *(x for x in inner if isinstance(x, BaseException))])


def _proven_instead(exc: BaseException) -> str | None:
    """The peer id whose key answered a handshake meant for another (py-libp2p's Noise raises
    PeerIDMismatchesPubkey, naming it, deep in the dial's exception chain), else None."""
    for e in _causes(exc):
        if isinstance(e, PeerIDMismatchesPubkey):
            m = _MISMATCH.search(str(e))
            if m is not None:
                try:
                    return ID.from_base58(m.group(1)).to_base58()
                except (ValueError, BaseLibp2pError):
                    return None
    return None


def _remote_peer(stream) -> str | None:
    """The remote peer's id (authenticated by the secure channel), None if it cannot be told."""
    peer = getattr(getattr(stream, "muxed_conn", None), "peer_id", None)
    return None if peer is None else str(peer)


def remote_address(stream) -> str | None:
    """The key of the remote peer's IP address (`protocol.guard.address_key`: the IPv4
    address, an IPv6 address's /64), as the TCP socket says; None if it cannot be told (py-
    libp2p reads it with getpeername and gives None for an IPv6 socket's 4-tuple: those peers
    share one key, which caps them together rather than not at all)."""
    get = getattr(stream, "get_remote_address", None)
    try:
        remote = get() if callable(get) else None
    except (*NET_ERRORS, AttributeError, NotImplementedError):
        return None
    if not isinstance(remote, tuple) or not remote or not isinstance(remote[0], str):
        return None
    return address_key(remote[0])


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except NET_ERRORS:
        pass  # the stream is already gone, which is what a reset wants


def _is_closed(stream) -> bool:
    closed = stream.is_closed  # a property on NetStream, a method on some other stream types
    return bool(closed() if callable(closed) else closed)
