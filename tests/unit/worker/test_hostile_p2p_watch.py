"""What the swarm's topic can make the worker's p2p watch (worker.p2p.SwarmWatch) write to its
log. Relay adverts may be signed by any key (the gate rate-limits each key, and keys are free):
the watch logged a line for every advert admitted, re-adverts of the same relay included."""

from __future__ import annotations

import logging
import threading
import time

from protocol.envelope import Envelope
from protocol.identity import KeyPair
from shardcast.p2p import KIND_RELAY
from shardcast.p2p.announcements import Announcement, RelayAdvert
from worker.p2p import SwarmWatch
from worker.state import WorkerState


class _Node:
    def subscribe(self, kinds):
        return self

    def get(self, timeout):
        time.sleep(timeout)

    def close(self):
        pass


def _advert(key: KeyPair, url: str, state: str = "up") -> Announcement:
    body = RelayAdvert(run_id="run", url=url, state=state)
    env = Envelope(kind=KIND_RELAY, run_id="run", audience="swarm", body=body.model_dump(mode="json"),
                   signer=key.public.hex, timestamp=time.time(), nonce="0" * 32, signature="x")
    return Announcement(kind=KIND_RELAY, body=body, signer=key.public, timestamp=time.time(), envelope=env)


def test_relay_adverts_from_throwaway_keys_do_not_flood_the_log(caplog):
    watch = SwarmWatch(_Node(), WorkerState(peer_id="w", coordinator_url="http://x", engine={}), threading.Event())
    honest = KeyPair.generate()
    keys = [KeyPair.generate() for _ in range(20)]
    with caplog.at_level(logging.INFO, logger="worker.p2p"):
        for _ in range(100):                      # an honest relay re-advertising every few seconds
            watch._note(_advert(honest, "http://198.51.100.7:8800"))
        for i in range(5000):                     # a flood: a new relay URL per advert
            watch._note(_advert(keys[i % 20], f"http://203.0.113.{i % 250 + 1}:{10000 + i}"))
        watch._note(_advert(honest, "http://198.51.100.7:8800", "down"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("198.51.100.7" in m for m in lines) == 2, "the honest relay: joined once, left once"
    assert len(lines) < 200, f"{len(lines)} log lines for 5,101 adverts"
