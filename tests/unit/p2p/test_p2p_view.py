"""The swarm view: newest version, live relays, peers holding versions, expiry and bounds."""

from __future__ import annotations

import threading

from protocol.envelope import AUDIENCE_SWARM, seal
from protocol.identity import KeyPair
from shardcast.p2p.announcements import (
    KIND_HAVE, KIND_NOTICE, KIND_RELAY, KIND_VERSION, Announcement, HaveAdvert, Notice, RelayAdvert,
    VersionAnnouncement,
)
from shardcast.p2p.view import MAX_URLS_PER_SIGNER, SwarmView

RUN = "run-1"
T = 1_800_000_000.0


def ann(kind, body, key, ts=T, endorsed=False) -> Announcement:
    env = seal(kind, body, key, now=ts, run_id=body.run_id, audience=AUDIENCE_SWARM)
    return Announcement(kind=kind, body=body, signer=key.public, timestamp=ts, envelope=env, endorsed=endorsed)


def relay(key, url="http://r:1", ts=T, endorsed=False, **kw):
    return ann(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, **kw), key, ts, endorsed)


def version(v, manifest=None):
    return ann(KIND_VERSION, VersionAnnouncement(run_id=RUN, version=v, step=v, manifest_sha256="a" * 64,
                                                 manifest=manifest), KeyPair.generate())


def test_latest_version_is_the_highest_announced():
    view = SwarmView()
    assert view.latest_version() is None
    for v in (3, 5, 4):
        view.apply(version(v), T)
    assert view.latest_version() == 5
    assert not view.apply(version(5), T)  # a repeat changes nothing


def test_relays_expire_unless_repeated_and_sort_by_capacity():
    view, a, b = SwarmView(), KeyPair.generate(), KeyPair.generate()
    view.apply(relay(a, "http://a:1", ttl_s=10, capacity_mbps=10), T)
    view.apply(relay(b, "http://b:1", ttl_s=30, capacity_mbps=99), T)
    assert [r.url for r in view.relays(T + 1)] == ["http://b:1", "http://a:1"]
    assert [r.url for r in view.relays(T + 11)] == ["http://b:1"]
    view.apply(relay(b, "http://b:1", ts=T + 25, ttl_s=30), T + 25)
    assert [r.url for r in view.relays(T + 40)] == ["http://b:1"]


def test_only_the_advertiser_can_withdraw_its_relay():
    view, owner, other = SwarmView(), KeyPair.generate(), KeyPair.generate()
    view.apply(relay(owner), T)
    view.apply(relay(other, state="down"), T)
    assert [r.url for r in view.relays(T)] == ["http://r:1"]
    view.apply(relay(owner, state="down"), T)
    assert view.relays(T) == []


def test_one_key_cannot_flood_the_relay_table():
    view, key = SwarmView(unendorsed_per_signer=1), KeyPair.generate()
    for i in range(MAX_URLS_PER_SIGNER + 5):
        view.apply(relay(key, f"http://r{i}:1", endorsed=True), T)
    assert len(view.relays(T)) == MAX_URLS_PER_SIGNER
    other = KeyPair.generate()
    for i in range(5):
        view.apply(relay(other, f"http://u{i}:1"), T)
    assert [r.url for r in view.relays(T) if not r.endorsed] == ["http://u0:1"]


def test_peers_with_a_version_and_their_expiry():
    view, a, b = SwarmView(), KeyPair.generate(), KeyPair.generate()
    addr = ["/ip4/127.0.0.1/tcp/1/p2p/x"]
    view.apply(ann(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1, 2], addrs=addr, ttl_s=10), a), T)
    view.apply(ann(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[2], addrs=addr, ttl_s=60), b), T)
    assert {p.peer_id for p in view.peers_with(2, T)} == {a.peer_id, b.peer_id}
    assert [p.peer_id for p in view.peers_with(1, T)] == [a.peer_id]
    assert [p.peer_id for p in view.peers_with(2, T + 20)] == [b.peer_id]


def test_notices_are_kept_in_order():
    view, c = SwarmView(), KeyPair.generate()
    for text in ("one", "two"):
        view.apply(ann(KIND_NOTICE, Notice(run_id=RUN, text=text), c), T)
    assert [n.text for _, _, n in view.notices()] == ["one", "two"]


def test_wait_for_version_wakes_when_a_newer_version_arrives():
    view = SwarmView()
    view.apply(version(1), T)
    assert view.wait_for_version(None, 0) == 1
    assert view.wait_for_version(1, 0.05) is None
    threading.Timer(0.1, lambda: view.apply(version(2), T)).start()
    assert view.wait_for_version(1, 30) == 2
