"""Red-team regressions of the swarm layer (hostile peers with free keys), one finding each:

- have adverts pointing at addresses that accept TCP and then never speak must not stall the
  node's advert loop: its own standing adverts (relay, shards held) keep going out within
  their ttl, so honest peers do not expire them;
- a have advert whose multiaddr py-libp2p cannot parse (/ip4/8.8.8.8/tcp/notaport) is refused
  by the gate, and could not kill the node that dials it;
- relay and have adverts over 16 KiB are refused before their body is encoded and their
  signature checked; version numbers in them are bounded;
- an advert older than what its signer last said (an "up" held back until after the "down")
  changes nothing in the view;
- a peer that has delivered verified shards is asked before untried throw-away keys;
- gossipsub's per-forwarder spam gate never holds back an admitted version announcement;
- a full table of version holders makes room for newer adverts (oldest advert out);
- one peer holds at most MAX_SERVES_PER_PEER of a node's serving slots;
- an announcement in one RPC with 40 admitted adverts is applied, not lost to py-libp2p's
  subscription channel of 32.
"""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, wait_for  # noqa: E402

from protocol.envelope import AUDIENCE_SWARM, seal  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p import announcements  # noqa: E402
from shardcast.p2p.announcements import (  # noqa: E402
    KIND_HAVE, KIND_RELAY, MAX_UNTRUSTED_BYTES, Gate, HaveAdvert, RelayAdvert, encode, endorse_relay,
)
from shardcast.p2p.errors import Rejected  # noqa: E402

RUN = "redteam-run"
OP, COORD = KeyPair.from_seed(b"R" * 32), KeyPair.from_seed(b"S" * 32)


def test_have_adverts_at_silent_addresses_do_not_stall_standing_adverts():
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never says a byte
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    cfg = dict(advert_interval_s=0.3, bootstrap_interval_s=0.3, advert_ttl_s=2.0, request_timeout_s=4.0, rate_per_s=5.0,
               allow_private_addresses=True, max_dial_peers=8)
    node = Nodes(cfg, RUN, OP, COORD)
    try:
        listener = node(COORD)
        boot = {"bootstrap": listener.multiaddrs}
        relay, attacker = node(KeyPair.generate(), **boot), node(KeyPair.generate(), **boot)
        for n in (relay, attacker):
            wait_for(lambda n=n: listener.peer_id in n.connected_peers(), "connected to the listener")
        url = "http://127.0.0.1:18900"
        relay.advertise_relay(url)
        wait_for(lambda: url in [r.url for r in listener.relays()], "the relay in the listener's view")
        fakes = [KeyPair.generate() for _ in range(8)]
        for k in fakes:
            body = HaveAdvert(run_id=RUN, versions=[1], addrs=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{k.peer_id}"],
                              ttl_s=600.0)
            attacker.publish_envelope(seal(KIND_HAVE, body, k, run_id=RUN, audience=AUDIENCE_SWARM))
        wait_for(lambda: len(relay.view.peers(time.time())) >= 8, "the relay hearing the fake holders")
        missing = 0.0
        t_end = time.monotonic() + 10.0
        while time.monotonic() < t_end:  # the relay dials the fakes; its advert must stay alive
            if url not in [r.url for r in listener.relays()]:
                missing += 0.1
            time.sleep(0.1)
        assert missing == 0.0, f"the relay's advert expired at the listener for {missing:.1f} s"
    finally:
        node.stop_all()
        silent.close()


def test_a_have_advert_with_an_unparsable_multiaddr_does_not_kill_the_nodes_that_hear_it():
    cfg = dict(advert_interval_s=0.3, bootstrap_interval_s=0.3, allow_private_addresses=True)
    node = Nodes(cfg, RUN, OP, COORD)
    try:
        listener = node(COORD, allow_private_addresses=False)  # as on the internet
        attacker = node(KeyPair.generate(), bootstrap=listener.multiaddrs)
        wait_for(lambda: listener.peer_id in attacker.connected_peers(), "connected to the listener")
        time.sleep(1.5)  # the gossipsub mesh forms on the heartbeat
        attacker.gate._check_addrs = lambda addrs: None  # a hostile peer's own gate lets anything out
        fake = KeyPair.generate()
        body = HaveAdvert(run_id=RUN, versions=[1], addrs=["/ip4/8.8.8.8/tcp/notaport"], ttl_s=60.0)
        sent = [0.0]

        def heard() -> bool:  # sealed and published again until heard: a mesh still forming drops it
            seen = listener.counters.snapshot()
            if not listener.running or seen.get("admitted", 0) + seen.get("rejected_address", 0) >= 1:
                return True
            if time.monotonic() - sent[0] > 0.5:  # a new envelope: the same one is a duplicate
                attacker.publish_envelope(seal(KIND_HAVE, body, fake, run_id=RUN, audience=AUDIENCE_SWARM))
                sent[0] = time.monotonic()
            return False

        wait_for(heard, "the listener hearing the advert")
        time.sleep(1.0)  # a few rounds of dialling advertised peers
        assert listener.running, "the listener's libp2p node died"
        assert listener.counters.snapshot().get("rejected_address", 0) >= 1
        assert fake.peer_id not in [p.peer_id for p in listener.view.peers(time.time())]
    finally:
        node.stop_all()


@pytest.mark.parametrize("addr", ["/ip4/8.8.8.8/tcp/notaport", "/ip4/8.8.8.8/tcp/99999",
                                  "/ip4/8.8.8.8/tcp/4001/x/y", "/ip6/2001:4860::1/tcp/-1"])
def test_the_gate_refuses_multiaddrs_that_would_not_parse_when_dialled(addr):
    from shardcast.p2p.addresses import AddressRefused, check_multiaddr

    for allow_private in (False, True):
        with pytest.raises(AddressRefused):
            check_multiaddr(addr, allow_private=allow_private)
    check_multiaddr("/ip4/8.8.8.8/tcp/4001/p2p/" + KeyPair.generate().peer_id, allow_private=False)


def test_an_oversized_relay_advert_is_refused_before_it_is_encoded_or_its_signature_checked(monkeypatch):
    now = 1_800_000_000.0
    key = KeyPair.generate()
    gate = Gate(RUN, OP.public, COORD.public, allow_private=True)
    # the largest honest adverts: an endorsed relay with a 512-byte URL and 64 versions, and a
    # holder with 8 addresses of 256 bytes; both stay well under the cap
    url = "https://" + "a" * 490 + ".example:8800"
    endorsement = endorse_relay(OP, run_id=RUN, relay_key=key.public, url=url, valid_for_s=600, now=now)
    big_relay = seal(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, region="r" * 64, versions=[2**63 - 1] * 64,
                                             endorsement=endorsement), key, run_id=RUN, audience=AUDIENCE_SWARM, now=now)
    addr = "/ip4/8.8.8.8/tcp/4001/p2p/" + key.peer_id
    big_have = seal(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[2**63 - 1] * 64, addrs=[addr] * 8),
                    key, run_id=RUN, audience=AUDIENCE_SWARM, now=now)
    for env in (big_relay, big_have):
        assert len(encode(env)) < MAX_UNTRUSTED_BYTES // 2
        gate.admit(encode(env), now)

    padded = big_relay.model_copy(update={"body": {**big_relay.body, "pad": ["x" * 100] * 9000}})

    def no_verify(*a, **k):
        raise AssertionError("an oversized untrusted advert was encoded and its signature checked")

    monkeypatch.setattr(announcements, "open_envelope", no_verify)
    with pytest.raises(Rejected) as err:
        gate.admit(encode(padded), now)
    assert err.value.reason == "oversized"


def test_version_numbers_in_adverts_anyone_signs_are_bounded():
    now = 1_800_000_000.0
    key = KeyPair.generate()
    body = {"run_id": RUN, "versions": [10**4000], "addrs": ["/ip4/8.8.8.8/tcp/4001"]}
    env = seal(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1], addrs=body["addrs"]), key, run_id=RUN,
               audience=AUDIENCE_SWARM, now=now)
    from protocol.envelope import envelope_signing_bytes

    sig = key.sign(envelope_signing_bytes(KIND_HAVE, body, key.public.hex, now, env.nonce, run_id=RUN,
                                          audience=AUDIENCE_SWARM))
    forged = env.model_copy(update={"body": body, "signature": sig})
    with pytest.raises(Rejected) as err:
        Gate(RUN, OP.public, COORD.public).admit(encode(forged), now)
    assert err.value.reason == "malformed"


def _ann(kind, body, key, ts):
    from shardcast.p2p.announcements import Announcement

    env = seal(kind, body, key, now=ts, run_id=RUN, audience=AUDIENCE_SWARM)
    return Announcement(kind=kind, body=body, signer=key.public, timestamp=ts, envelope=env)


def test_a_relay_advert_held_back_until_after_its_withdrawal_does_not_bring_the_relay_back():
    from shardcast.p2p.view import SwarmView

    t, key, url = 1_800_000_000.0, KeyPair.generate(), "http://8.8.8.8:8800"
    view = SwarmView()
    view.apply(_ann(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, ttl_s=600), key, t), t)
    held_back = _ann(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, ttl_s=600), key, t + 10)  # never forwarded yet
    view.apply(_ann(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, state="down"), key, t + 20), t + 20)
    assert view.relays(t + 20) == []
    assert not view.apply(held_back, t + 30)  # a forwarder (or a slow gossip path) delivers it late
    assert view.relays(t + 30) == []
    # an old "down" delivered after the relay came back does not remove it either
    view.apply(_ann(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, ttl_s=30), key, t + 40), t + 40)
    assert not view.apply(_ann(KIND_RELAY, RelayAdvert(run_id=RUN, url=url, state="down"), key, t + 35), t + 41)
    assert [r.url for r in view.relays(t + 41)] == [url]


def test_an_older_have_advert_does_not_replace_a_newer_one():
    from shardcast.p2p.view import SwarmView

    t, key = 1_800_000_000.0, KeyPair.generate()
    view = SwarmView()
    addrs = ["/ip4/8.8.8.8/tcp/4001"]
    view.apply(_ann(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1, 2], addrs=addrs, ttl_s=30), key, t + 10), t + 10)
    assert not view.apply(_ann(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1], addrs=["/ip4/9.9.9.9/tcp/1"],
                                                     ttl_s=600), key, t), t + 11)
    [peer] = view.peers(t + 11)
    assert peer.versions == (1, 2) and peer.addrs == tuple(addrs) and peer.expires_at == t + 40


def test_peers_that_delivered_are_asked_before_fresh_keys(tmp_path):
    """4096 throw-away keys can advertise any version; each one that stalls costs a worker a
    request timeout. A peer that has served verified shards is asked before untried ones."""
    import random

    from p2p_harness import signed_checkpoint

    from shardcast.layout import read_manifest
    from shardcast.p2p.errors import PeerRequestFailed
    from shardcast.p2p.exchange import PeerShards
    from shardcast.p2p.view import PeerInfo, VersionInfo

    folder = signed_checkpoint(tmp_path, 1, run_id=RUN, operator=OP, size=200 * 1024)
    env = read_manifest(folder)
    from protocol.manifest import open_manifest

    manifest = open_manifest(env, OP.public)
    honest = PeerInfo("honest", (), (1,), time.time() + 600)
    sybils = [PeerInfo(f"sybil-{i}", (), (1,), time.time() + 600) for i in range(40)]
    asked: list[str] = []

    class View:
        @staticmethod
        def version(v):
            return VersionInfo(1, 1, "a" * 64, env, time.time())

    class Node:
        run_id, view = RUN, View()

        def peers_with(self, v):
            return [*sybils, honest]

        def request(self, peer, req, max_size):
            asked.append(peer.peer_id)
            if peer is not honest:
                raise PeerRequestFailed("stalled until the deadline")
            s = manifest.shards[req.index]
            with open(folder / s.path, "rb") as fh:
                fh.seek(s.offset)
                return fh.read(s.size)

    peers = PeerShards(Node(), OP.public, rng=random.Random(1))
    for _ in range(20):  # the first shards may meet only sybils (each struck once per stall)
        try:
            peers.fetch_shard(1, 0)
        except Exception:  # noqa: BLE001
            pass
        if "honest" in asked:
            break
    assert "honest" in asked
    asked.clear()
    for s in manifest.shards:
        peers.fetch_shard(1, s.index)
    assert asked == ["honest"] * len(manifest.shards), asked[:8]


def test_a_flood_of_admitted_adverts_does_not_stop_a_version_announcement_two_hops_away(tmp_path):
    """Gossipsub's spam gate (max_messages_per_s per forwarding peer) does not forward what
    one peer relays beyond that rate. A flood of throw-away keys, each advert admitted, that
    passes through the coordinator made every worker drop the coordinator's own version
    announcement too, so peers one hop further never heard it while the flood lasted."""
    import threading

    from p2p_harness import signed_checkpoint

    from shardcast.layout import read_manifest

    cfg = dict(advert_interval_s=30.0, bootstrap_interval_s=0.3, allow_private_addresses=True,
               max_messages_per_s=5.0, max_dial_peers=0)
    node = Nodes(cfg, RUN, OP, COORD)

    stop = threading.Event()
    try:
        coord = node(COORD)
        worker = node(KeyPair.generate(), bootstrap=coord.multiaddrs)
        far = node(KeyPair.generate(), bootstrap=worker.multiaddrs)
        attacker = node(KeyPair.generate(), bootstrap=coord.multiaddrs)
        for n, peer in ((worker, coord), (far, worker), (attacker, coord)):
            wait_for(lambda n=n, peer=peer: peer.peer_id in n.connected_peers(), "connected")
        time.sleep(2.0)  # meshes form on the heartbeat

        def flood():
            i = 0
            while not stop.is_set():
                k = KeyPair.generate()
                body = HaveAdvert(run_id=RUN, versions=[1], addrs=["/ip4/8.8.8.8/tcp/4001"], ttl_s=60.0)
                try:
                    attacker.publish_envelope(seal(KIND_HAVE, body, k, run_id=RUN, audience=AUDIENCE_SWARM))
                except Exception:  # noqa: BLE001 - the node stopping
                    return
                i += 1
                time.sleep(0.02)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        wait_for(lambda: len(far.view.peers(time.time())) >= 3, "the flood reaching the far peer")
        folder = signed_checkpoint(tmp_path, 1, run_id=RUN, operator=OP, size=1000)
        coord.announce_version(read_manifest(folder))
        deadline = time.monotonic() + 15.0  # before the fix it never arrived; a loaded machine is slow
        while far.latest_version() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.latest_version() == 1
        assert far.latest_version() == 1, "the version announcement did not get past the first hop"
    finally:
        stop.set()
        node.stop_all()


def test_throw_away_keys_that_filled_the_peer_table_once_do_not_keep_honest_holders_out():
    from shardcast.p2p.view import MAX_PEERS, SwarmView

    t = 1_800_000_000.0
    view = SwarmView()
    addrs = ["/ip4/8.8.8.8/tcp/4001"]
    fill = KeyPair.generate()  # one key signs them all here; the view keys them by signer alone
    for i in range(MAX_PEERS):
        body = HaveAdvert(run_id=RUN, versions=[1], addrs=addrs, ttl_s=600)
        a = _ann(KIND_HAVE, body, fill, t)
        view.apply(type(a)(kind=a.kind, body=a.body, signer=KeyPair.from_seed(i.to_bytes(32, "big")).public,
                           timestamp=t, envelope=a.envelope), t)
    assert len(view.peers(t)) == MAX_PEERS
    honest = KeyPair.generate()
    assert view.apply(_ann(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1], addrs=addrs, ttl_s=30), honest, t + 10),
                      t + 10)
    assert honest.peer_id in [p.peer_id for p in view.peers_with(1, t + 10)]
    assert len(view.peers(t + 10)) == MAX_PEERS
    # an advert no newer than every one held still finds the table full
    late = KeyPair.generate()
    assert not view.apply(_ann(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1], addrs=addrs), late, t - 1), t + 10)


def test_one_peer_that_opens_streams_and_says_nothing_cannot_take_every_serving_slot(tmp_path):
    from p2p_harness import signed_checkpoint

    from shardcast.p2p import FolderStore, PeerShards, wire

    cfg = {"advert_interval_s": 0.3, "bootstrap_interval_s": 0.3, "allow_private_addresses": True,
           "max_concurrent_serves": 4}
    node = Nodes(cfg, RUN, OP, COORD)

    signed_checkpoint(tmp_path / "held", 1, run_id=RUN, operator=OP, size=1000)
    try:
        boot = node(COORD)
        b = {"bootstrap": boot.multiaddrs}
        holder = node(KeyPair.generate(), FolderStore(tmp_path / "held", OP.public), **b)
        worker, attacker = node(KeyPair.generate(), **b), node(KeyPair.generate(), **b)
        for who in (worker, attacker):  # each hears the holder's advert in its own time
            wait_for(lambda who=who: holder.peer_id in {p.peer_id for p in who.peers_with(1)}, "the holder advertised")
        target = next(p for p in attacker.peers_with(1) if p.peer_id == holder.peer_id)
        silent = []

        async def open_silent_streams():
            from libp2p.peer.id import ID

            from shardcast.p2p._host import _peer_info

            host = attacker._host.host
            await host.connect(_peer_info(target.peer_id, target.addrs))
            for _ in range(8):
                silent.append(await host.new_stream(ID.from_base58(target.peer_id), [wire.PROTOCOL_ID]))

        attacker._call(open_silent_streams)
        time.sleep(0.5)  # the holder's handlers are waiting for requests that never come
        peers = PeerShards(worker, OP.public)
        assert peers.fetch_shard(1, 0)
    finally:
        node.stop_all()


def test_an_announcement_in_a_burst_of_admitted_adverts_is_not_lost(tmp_path):
    """py-libp2p runs every message of an incoming RPC as its own task, and hands admitted
    messages to the topic subscription through a channel of 32 that drops when full, after
    marking the message seen. An attacker writes one RPC with 40 adverts of its throw-away
    keys (each admitted) and, last, the coordinator's version announcement it just received:
    the announcement was admitted, then dropped, and never delivered."""
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

    from p2p_harness import signed_checkpoint
    from shardcast.layout import read_manifest
    from shardcast.p2p.announcements import version_announcement

    cfg = {"advert_interval_s": 30.0, "bootstrap_interval_s": 0.3, "allow_private_addresses": True,
           "rate_burst": 64}
    node = Nodes(cfg, RUN, OP, COORD)
    try:
        victim = node(KeyPair.generate())
        attacker = node(KeyPair.generate(), bootstrap=victim.multiaddrs)
        wait_for(lambda: victim.peer_id in attacker.connected_peers(), "connected")
        env = read_manifest(signed_checkpoint(tmp_path, 1, run_id=RUN, operator=OP, size=1000))
        payloads = [encode(seal(KIND_HAVE, HaveAdvert(run_id=RUN, versions=[1], addrs=["/ip4/8.8.8.8/tcp/4001"]),
                                KeyPair.generate(), run_id=RUN, audience=AUDIENCE_SWARM)) for _ in range(40)]
        payloads.append(encode(version_announcement(env, RUN, 1, 1, COORD)))

        async def burst():  # what handle_rpc does with one RPC of 41 messages
            ps = victim._host.pubsub
            from libp2p.peer.id import ID

            forwarder = ID.from_base58(attacker.peer_id)
            for i, data in enumerate(payloads):
                a = attacker._host.pubsub
                msg = rpc_pb2.Message(data=data, topicIDs=[victim._host.topic], from_id=a.my_id.to_bytes(),
                                      seqno=(10_000 + i).to_bytes(8, "big"))
                msg.signature = a.sign_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
                msg.key = a.host.get_public_key().serialize()
                ps.manager.run_task(ps.push_msg, forwarder, msg)

        victim._call(burst)
        deadline = time.monotonic() + 5.0
        while victim.counters.snapshot().get("admitted", 0) < 41 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert victim.latest_version() == 1, victim.counters.snapshot()
        assert len(victim.view.peers(time.time())) == 40
    finally:
        node.stop_all()
