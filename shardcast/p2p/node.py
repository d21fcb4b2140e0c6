"""P2PNode: a role's libp2p node, run in its own trio thread behind a synchronous API.

py-libp2p is trio-based; every role of swarmrl is synchronous code or asyncio (FastAPI).
The node keeps trio to itself: `start()` runs `trio.run` in a daemon thread and returns once
the host listens; every other method is safe from any thread except the node's own, and
crosses into trio with `trio.from_thread.run` (blocking the caller, never the trio loop).
Announcements reach callers two ways: the `view` (newest version, relays, peers holding a
version, notices; `wait_for_version` long-polls it), and `subscribe()` queues, sync
(`queue.Queue`) or asyncio (fed with `loop.call_soon_threadsafe`), bounded, oldest dropped.
From asyncio code, call the blocking methods through `await asyncio.to_thread(...)`
(publishing, `request`, `wait_for_version`); the view's plain reads are cheap and lock-only.

Standing adverts (the newest version this node announced, the relays it advertises, the
versions its ShardStore holds) are re-sealed and repeated every `advert_interval_s`, and at
once after connecting to a bootstrap peer, so late joiners learn them and receivers can
expire what is no longer repeated. `stop()` withdraws relay adverts, then cancels the trio
run and joins the thread.

If libp2p is missing or the host cannot start, `start()` raises P2PUnavailable;
`start_node()` turns that into one log line and None, so a role falls back to HTTP only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Callable

from protocol.envelope import AUDIENCE_SWARM, Envelope, seal
from protocol.errors import ProtocolError
from protocol.identity import KeyPair, PublicKey
from protocol.manifest import open_manifest
from shardcast.p2p import wire
from shardcast.p2p.announcements import (
    KIND_HAVE, KIND_NOTICE, KIND_RELAY, Announcement, Gate, HaveAdvert, Notice, RelayAdvert,
    version_announcement,
)
from shardcast.p2p.config import P2PConfig
from shardcast.p2p.errors import P2PError, P2PStopped, P2PUnavailable
from shardcast.p2p.store import ShardStore
from shardcast.p2p.view import Counters, PeerInfo, RelayInfo, SwarmView

log = logging.getLogger("shardcast.p2p")
WITHDRAW_GRACE_S = 0.5


def _quiet_libp2p() -> None:
    """py-libp2p logs routine network events (a peer that went away: "Failed to open TCP
    stream") at ERROR, and without LIBP2P_DEBUG it leaves its logger without handlers, so
    Python's last-resort handler prints them raw into the role's log. This layer reports what
    matters itself (one line per unreachable bootstrap peer, failed requests at INFO), so
    py-libp2p's own log is shown only when asked for, with LIBP2P_DEBUG (e.g. =WARNING: its
    handlers then write to stderr and a file)."""
    import os

    libp2p_log = logging.getLogger("libp2p")
    if not os.environ.get("LIBP2P_DEBUG") and not libp2p_log.handlers:
        libp2p_log.addHandler(logging.NullHandler())


def libp2p_available() -> bool:
    try:
        import libp2p  # noqa: F401
        import trio  # noqa: F401
    except ImportError:
        return False
    return True


class Subscription:
    """Announcements admitted after subscribing that changed the node's view (a new version,
    relay or notice; a peer's new holdings; not the periodic repeats), oldest first; bounded
    (oldest dropped, counted in `dropped`)."""

    def __init__(self, kinds: set[str] | None, loop: asyncio.AbstractEventLoop | None, maxsize: int):
        self.kinds, self.loop, self.maxsize = kinds, loop, maxsize
        self.dropped = 0
        self.closed = False
        self._q: queue.Queue | asyncio.Queue = queue.Queue() if loop is None else asyncio.Queue()

    def _offer(self, ann: Announcement) -> None:
        if self.closed or (self.kinds is not None and ann.kind not in self.kinds):
            return
        if self.loop is None:
            self._put(ann)
            return
        try:
            self.loop.call_soon_threadsafe(self._put, ann)
        except RuntimeError:  # the subscriber's event loop is closed: nobody will read
            self.closed = True

    def _put(self, ann: Announcement) -> None:
        while self._q.qsize() >= self.maxsize:
            self._q.get_nowait()
            self.dropped += 1
        self._q.put_nowait(ann)

    def get(self, timeout: float | None = None) -> Announcement | None:
        """Next announcement (sync subscriptions), or None after `timeout` seconds."""
        if self.loop is not None:
            raise P2PError("this subscription is asyncio: use `await sub.aget()`")
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    async def aget(self) -> Announcement:
        """Next announcement (asyncio subscriptions, from the loop given to subscribe)."""
        if self.loop is None:
            raise P2PError("this subscription is synchronous: use `sub.get(timeout)`")
        return await self._q.get()

    def close(self) -> None:
        self.closed = True


class P2PNode:
    def __init__(self, cfg: P2PConfig, key: KeyPair, run_id: str, operator_key: PublicKey,
                 coordinator_key: PublicKey | None = None, store: ShardStore | None = None,
                 role: str = "peer"):
        self.cfg, self.key, self.run_id, self.role = cfg, key, run_id, role
        self.operator_key, self.coordinator_key, self.store = operator_key, coordinator_key, store
        self.view = SwarmView(unendorsed_relays=cfg.unendorsed_relays,
                              unendorsed_per_signer=cfg.unendorsed_relays_per_signer)
        self.gate = Gate(run_id, operator_key, coordinator_key, max_skew_s=cfg.max_skew_s,
                         rate_burst=cfg.rate_burst, rate_per_s=cfg.rate_per_s,
                         allow_private=cfg.allow_private_addresses)
        self.counters = Counters()
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._standing: dict[str, Callable[[], Envelope | None]] = {}
        self._announced: tuple[int, int, Envelope] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._settled = threading.Event()  # set once the host listens or the thread has ended
        self._error: BaseException | None = None
        self._token = None
        self._scope = None
        self._host = None
        self._addrs: list[str] = []

    # -- life cycle -------------------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def multiaddrs(self) -> list[str]:
        """Where to dial this node (each ends in /p2p/<peer id>); empty until started."""
        return list(self._addrs)

    @property
    def running(self) -> bool:
        return self._ready.is_set() and self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 30.0) -> list[str]:
        """Start the host in its own thread; return its multiaddrs. Raises P2PUnavailable."""
        if not libp2p_available():
            raise P2PUnavailable("libp2p is not installed (pip install 'swarmrl[p2p]')")
        if self._thread is not None:
            raise P2PError("this node was already started")
        _quiet_libp2p()
        if self.store is not None:
            self._standing["have"] = self._have_advert
        self._thread = threading.Thread(target=self._thread_main, name=f"p2p-{self.role}", daemon=True)
        self._thread.start()
        self._settled.wait(timeout_s)
        if self._error is not None or not self._ready.is_set():
            self.stop()
            why = self._error if self._error is not None else f"not listening after {timeout_s:.0f} s"
            raise P2PUnavailable(f"libp2p host did not start on {self.cfg.listen_host}:{self.cfg.listen_port}: {why}")
        log.info("p2p: %s %s listening on %s", self.role, self.peer_id, ", ".join(self._addrs))
        return self.multiaddrs

    def _thread_main(self) -> None:
        import trio

        try:
            trio.run(self._main)
        except Exception as exc:  # reported to start() or logged: the node is down, roles go on over HTTP
            self._error = exc
            if self._ready.is_set():
                log.error("p2p: the libp2p node stopped: %s", exc, exc_info=exc)
        finally:
            self._settled.set()

    async def _main(self) -> None:
        import trio

        from shardcast.p2p._host import SwarmHost

        self._token = trio.lowlevel.current_trio_token()
        self._host = SwarmHost(self.cfg, self.key, self.run_id, self.gate, self.view, self.store,
                               self._deliver, self._standing_envelopes, self.counters)
        with trio.CancelScope() as scope:
            self._scope = scope

            def ready(addrs: list[str]) -> None:
                self._addrs = addrs
                self._ready.set()
                self._settled.set()

            await self._host.run(ready)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Withdraw relay adverts, stop the host and join its thread (idempotent)."""
        if self.running:
            with self._lock:
                relays = [k for k in self._standing if k.startswith("relay:")]
            for k in relays:
                try:
                    self.withdraw_relay(k[len("relay:"):])
                except P2PError as exc:
                    log.debug("p2p: could not withdraw relay advert: %s", exc)
            if relays:  # gossip sends from per-peer queues: give the withdrawals time to leave
                time.sleep(WITHDRAW_GRACE_S)
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._token is not None and self._scope is not None:
            import trio

            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass  # already stopped
        thread.join(timeout_s)
        with self._lock:
            for sub in self._subs:
                sub.close()
            self._subs.clear()

    def __enter__(self) -> "P2PNode":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the bridge into trio --------------------------------------------------------------
    def _call(self, afn, *args):
        import trio

        if not self.running:
            raise P2PStopped("the p2p node is not running")
        if threading.current_thread() is self._thread:
            raise P2PError("P2PNode methods cannot be called from the node's own trio thread")
        try:
            return trio.from_thread.run(afn, *args, trio_token=self._token)
        except trio.RunFinishedError as exc:
            raise P2PStopped("the p2p node stopped during the call") from exc

    def _kick(self) -> None:
        import trio

        if self.running:
            try:
                trio.from_thread.run_sync(self._host.kick, trio_token=self._token)
            except trio.RunFinishedError:
                pass  # stopped meanwhile: nothing to repeat

    def publish_envelope(self, env: Envelope) -> None:
        """Publish any signed envelope on the run's topic (receivers' gates decide)."""
        from shardcast.p2p._host import NET_ERRORS

        try:
            self._call(self._host.publish, env)
        except NET_ERRORS as exc:
            raise P2PError(f"publishing {env.kind} failed: {exc}") from exc

    # -- announcing -------------------------------------------------------------------------
    def announce_version(self, manifest_env: Envelope, *, standing: bool = True) -> None:
        """Announce a policy version (this node's key must be the operator's or the
        coordinator's); repeated until a newer one is announced when `standing`."""
        if self.key.public.hex not in {self.operator_key.hex, getattr(self.coordinator_key, "hex", None)}:
            raise P2PError("only the operator or the coordinator key may announce policy versions")
        try:
            m = open_manifest(manifest_env, self.operator_key)
        except ProtocolError as exc:
            raise P2PError(f"refusing to announce an invalid manifest: {exc}") from exc
        if m.run_id != self.run_id:
            raise P2PError(f"manifest is for run {m.run_id}, this node is in run {self.run_id}")

        with self._lock:
            if standing and (self._announced is None or self._announced[0] <= m.version):
                self._announced = (m.version, m.step, manifest_env)
                self._standing["version"] = self._version_advert
        self.publish_envelope(version_announcement(manifest_env, m.run_id, m.version, m.step, self.key))

    def _version_advert(self) -> Envelope | None:
        with self._lock:
            announced = self._announced
        if announced is None:
            return None
        version, step, manifest_env = announced
        return version_announcement(manifest_env, self.run_id, version, step, self.key)

    def advertise_relay(self, url: str, *, region: str = "", capacity_mbps: float = 0.0,
                        versions: Callable[[], list[int]] | None = None,
                        endorsement: Envelope | None = None) -> None:
        """Advertise a relay run by this node's key until `withdraw_relay` or `stop`, with the
        operator's `endorsement` of this key and URL when it has one (see announcements)."""
        def make() -> Envelope:
            held = list(versions())[-64:] if versions is not None else []
            body = RelayAdvert(run_id=self.run_id, url=url, region=region, capacity_mbps=capacity_mbps,
                               ttl_s=self.cfg.advert_ttl_s, versions=held, endorsement=endorsement)
            return seal(KIND_RELAY, body, self.key, run_id=self.run_id, audience=AUDIENCE_SWARM)

        make()  # validate the arguments here, in the caller's thread
        with self._lock:
            self._standing[f"relay:{url}"] = make
        self._kick()

    def withdraw_relay(self, url: str) -> None:
        with self._lock:
            self._standing.pop(f"relay:{url}", None)
        body = RelayAdvert(run_id=self.run_id, url=url, state="down", ttl_s=self.cfg.advert_ttl_s)
        self.publish_envelope(seal(KIND_RELAY, body, self.key, run_id=self.run_id, audience=AUDIENCE_SWARM))

    def notice(self, text: str, *, level: str = "info", data: dict | None = None) -> None:
        """Publish a coordinator notice (this node's key must be the coordinator's)."""
        body = Notice(run_id=self.run_id, level=level, text=text, data=data or {})
        self.publish_envelope(seal(KIND_NOTICE, body, self.key, run_id=self.run_id, audience=AUDIENCE_SWARM))

    def refresh_have(self) -> None:
        """Advertise the store's versions now (call after a new version lands in it)."""
        self._kick()

    def _have_advert(self) -> Envelope | None:
        held = self.store.versions() if self.store is not None else []
        if not held or not self._addrs:
            return None
        body = HaveAdvert(run_id=self.run_id, versions=held[-64:], addrs=self._addrs[:8],
                          ttl_s=self.cfg.advert_ttl_s)
        return seal(KIND_HAVE, body, self.key, run_id=self.run_id, audience=AUDIENCE_SWARM)

    def _standing_envelopes(self) -> list[Envelope]:
        with self._lock:
            makers = list(self._standing.values())
        out = []
        for make in makers:
            env = make()
            if env is not None:
                out.append(env)
        return out

    # -- hearing ----------------------------------------------------------------------------
    def subscribe(self, kinds: set[str] | None = None, *, loop: asyncio.AbstractEventLoop | None = None,
                  maxsize: int = 1000) -> Subscription:
        """Queue of admitted announcements (of `kinds`, default all). Pass the running loop
        for an asyncio queue (`await sub.aget()`); else `sub.get(timeout)`."""
        sub = Subscription(kinds, loop, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _deliver(self, ann: Announcement) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if not s.closed]
            subs = list(self._subs)
        for sub in subs:
            sub._offer(ann)

    def latest_version(self) -> int | None:
        return self.view.latest_version()

    def wait_for_version(self, after: int | None, timeout_s: float) -> int | None:
        return self.view.wait_for_version(after, timeout_s)

    def relays(self) -> list[RelayInfo]:
        return self.view.relays(time.time())

    def peers_with(self, version: int) -> list[PeerInfo]:
        return [p for p in self.view.peers_with(version, time.time()) if p.peer_id != self.peer_id]

    def connected_peers(self) -> list[str]:
        async def peers() -> list[str]:
            return [p.to_base58() for p in self._host.host.get_connected_peers()]

        return self._call(peers)

    def request(self, peer: PeerInfo, req: wire.ShardRequest, max_size: int) -> bytes:
        """One shard-exchange request to `peer` (unverified bytes; see PeerShards)."""
        return self._call(self._host.request, peer.peer_id, peer.addrs, req, max_size)


def start_node(cfg: P2PConfig, key: KeyPair, run_id: str, operator_key: PublicKey,
               coordinator_key: PublicKey | None = None, store: ShardStore | None = None,
               role: str = "peer", if_unavailable: str = "continuing over HTTP only") -> P2PNode | None:
    """Start a node, or log one line (`if_unavailable` says what happens next) and return None
    when it cannot run."""
    if not cfg.enabled:
        return None
    node = P2PNode(cfg, key, run_id, operator_key, coordinator_key, store, role)
    try:
        node.start()
    except P2PUnavailable as exc:
        log.warning("p2p: %s; %s", exc, if_unavailable)
        return None
    return node
