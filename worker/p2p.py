"""The worker's node in the libp2p swarm layer (shardcast.p2p), beside HTTP.

    node = join(cfg, key, run_info, cache_dir)     # None: HTTP only (one log line says why)
    peers = PeerShards(node, operator_key)         # given to the ShardcastClient (shardcast.client)
    watch = SwarmWatch(node, state, stop); watch.start() ... watch.join(); node.stop()

What the node changes for the worker, all through the shardcast client: versions announced on
the run's topic wake the policy downloader at once (the relays' long-polls still run beside);
relays advertised on the topic are used beside the configured ones; the checkpoint cache is
served to peers (and advertised after each new version); shards the relays cannot deliver
come from peers, each checked against the operator-signed manifest.

`SwarmWatch` only reports: it logs what the topic brings (new versions with their delay,
relays joining and leaving: each relay once per change, at most RELAYS_LOGGED of them by name) and keeps `WorkerState.p2p` (the `p2p` key of GET /status:
the node's id and addresses, relays and versions it knows, when each version was heard).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from protocol.identity import KeyPair
from protocol.messages import RunInfo
from shardcast.p2p import KIND_RELAY, KIND_VERSION, P2PNode
from shardcast.p2p.roles import join_run, node_status
from worker.config import WorkerConfig
from worker.state import WorkerState

log = logging.getLogger(__name__)
STATUS_EVERY_S = 2.0
VERSIONS_HEARD_KEPT = 8
RELAYS_LOGGED = 64        # relay URLs whose adverts are logged one by one (when their state changes)
SUMMARY_EVERY_S = 60.0    # adverts of relays beyond those: one summary line at most this often


def join(cfg: WorkerConfig, key: KeyPair, info: RunInfo, cache_dir: Path) -> P2PNode | None:
    return join_run(cfg.p2p, key, info, store_dir=cache_dir, role="worker")


class SwarmWatch:
    def __init__(self, node: P2PNode, state: WorkerState, stop: threading.Event):
        self.node, self.state, self.stop = node, state, stop
        self.heard: dict[int, float] = {}   # version -> when this worker heard it (time.time())
        self._relay_state: dict[str, str] = {}  # relay URL -> its last logged state ("up"/"down")
        self._unlogged = 0                   # adverts of other relays heard since the last summary
        self._summary_at = 0.0
        self._sub = node.subscribe({KIND_VERSION, KIND_RELAY})
        self._thread = threading.Thread(target=self._loop, daemon=True, name="p2p-watch")

    def start(self) -> None:
        self._publish_status()
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self._sub.close()
        self._thread.join(timeout)

    def _loop(self) -> None:
        next_status = 0.0
        while not self.stop.is_set():
            ann = self._sub.get(timeout=0.5)
            if ann is not None:
                self._note(ann)
            if ann is not None or time.monotonic() >= next_status:
                self._publish_status()
                next_status = time.monotonic() + STATUS_EVERY_S

    def _note(self, ann) -> None:
        now = time.time()
        body = ann.body
        if ann.kind == KIND_VERSION:
            if body.version not in self.heard:
                self.heard[body.version] = now
                for v in sorted(self.heard)[:-VERSIONS_HEARD_KEPT]:
                    del self.heard[v]
            log.info("p2p: policy version %d announced by %s (%.0f ms after it was signed)", body.version,
                     ann.signer_id, 1000 * max(0.0, now - ann.timestamp))
        elif ann.kind == KIND_RELAY:
            self._note_relay(ann, now)

    def _note_relay(self, ann, now: float) -> None:
        """Log a relay joining or leaving: once per change of its state, for at most RELAYS_LOGGED
        relays (endorsed ones always); others are counted into a summary line a minute. Any key
        may sign a relay advert (the gate rate-limits each key, and keys are free): every advert
        was a log line, an honest relay's re-adverts every few seconds included."""
        url, state = ann.body.url, ann.body.state
        known = self._relay_state.get(url)
        if known == state:
            return
        if known is None and len(self._relay_state) >= RELAYS_LOGGED and not ann.endorsed:
            self._unlogged += 1
            if now - self._summary_at >= SUMMARY_EVERY_S:
                log.info("p2p: %d adverts of further relays heard (only the first %d relays are logged)",
                         self._unlogged, RELAYS_LOGGED)
                self._unlogged, self._summary_at = 0, now
            return
        self._relay_state[url] = state
        log.info("p2p: relay %s %s (advertised by %s%s)", url, "joined" if state == "up" else "left",
                 ann.signer_id, ", endorsed" if ann.endorsed else "")

    def _publish_status(self) -> None:
        status = node_status(self.node)
        if status is not None:
            status["versions_heard"] = {str(v): t for v, t in sorted(self.heard.items())}
        self.state.set(p2p=status)
