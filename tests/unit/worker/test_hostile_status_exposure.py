"""The worker's status server, as anyone on the machine or the network sees it: listening on
loopback only (by default), read-only, and showing nothing secret (no key, no spool contents)."""

from __future__ import annotations

import json

import httpx

from protocol.http import read_port_file
from tests.waiting import wait_until
from worker.status_server import PORT_FILE


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (Linux /proc/net/tcp, tcp6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


def test_the_status_server_listens_on_loopback_only_and_is_read_only(fake, versions, start_daemon, tmp_path):
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1, what="a submission")
    port = read_port_file(tmp_path / "worker" / PORT_FILE)
    try:
        assert _listening_addresses(port) == {"0100007F"}   # 127.0.0.1, nothing else
        base = f"http://127.0.0.1:{port}"
        status = httpx.get(base + "/status").json()
        text = json.dumps(status)
        assert r.daemon.key.seed.hex() not in text                   # the private seed never
        assert "completions" not in text and "proof" not in text   # no spool contents
        assert httpx.post(base + "/status", content=b"{}").status_code in (405, 413, 400)
        assert httpx.delete(base + "/status").status_code == 405
    finally:
        r.stop()
