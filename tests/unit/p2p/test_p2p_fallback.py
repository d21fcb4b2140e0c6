"""Without libp2p (or with p2p disabled) the package imports and roles fall back to HTTP."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import shardcast.p2p as p2p
from protocol.identity import KeyPair
from shardcast.p2p import P2PConfig, P2PNode, P2PUnavailable, start_node

OP = KeyPair.from_seed(b"o" * 32)


def test_disabled_config_starts_nothing():
    assert start_node(P2PConfig(enabled=False), KeyPair.generate(), "r", OP.public) is None


def test_missing_libp2p_is_one_log_line_and_no_node(monkeypatch, caplog):
    monkeypatch.setattr("shardcast.p2p.node.libp2p_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="shardcast.p2p"):
        assert start_node(P2PConfig(), KeyPair.generate(), "r", OP.public) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "pip install 'swarmrl[p2p]'" in lines[0] and "HTTP only" in lines[0]
    with pytest.raises(P2PUnavailable):
        P2PNode(P2PConfig(), KeyPair.generate(), "r", OP.public).start()


def test_package_imports_when_libp2p_cannot_be_imported():
    code = (
        "import sys; sys.modules['libp2p'] = None\n"
        "import shardcast.p2p as p\n"
        "from protocol.identity import KeyPair\n"
        "assert not p.libp2p_available()\n"
        "k = KeyPair.generate()\n"
        "assert p.start_node(p.P2PConfig(), k, 'r', k.public) is None\n"
        "print('fallback-ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fallback-ok" in out.stdout
    assert "continuing over HTTP only" in out.stderr


def test_public_names_are_pinned():
    assert sorted(p2p.__all__) == sorted([
        "KIND_HAVE", "KIND_NOTICE", "KIND_RELAY", "KIND_VERSION", "Announcement", "FolderStore", "Gate",
        "HaveAdvert", "Notice", "P2PConfig", "P2PError", "P2PNode", "P2PStopped", "P2PUnavailable",
        "PeerInfo", "PeerRequestFailed", "PeerShards", "Rejected", "RelayAdvert", "RelayInfo",
        "ShardStore", "Subscription", "SwarmView", "VersionAnnouncement", "VersionInfo",
        "bootstrap_multiaddr", "libp2p_available", "manifest_digest", "start_node",
    ])
    for name in p2p.__all__:
        assert hasattr(p2p, name)


def test_bootstrap_addresses_must_name_a_peer():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be a multiaddr ending in /p2p/"):
        P2PConfig(bootstrap=["/ip4/127.0.0.1/tcp/4001"])
    ok = p2p.bootstrap_multiaddr("10.0.0.5", 4001, OP.peer_id)
    assert P2PConfig(bootstrap=[ok]).bootstrap == [ok]
