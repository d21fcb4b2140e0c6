"""swarmrl.procs.free_port: the launcher's ports for services that start a moment later."""

from __future__ import annotations

import socket

from swarmrl.procs import _ephemeral_range, free_port


def test_free_ports_are_bindable_distinct_and_outside_the_ephemeral_range():
    lo, hi = _ephemeral_range()
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if lo <= p <= hi]
    # what other processes get meanwhile (port-0 listeners, outgoing connections) is never one of them
    held = []
    try:
        for _ in range(100):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        assert not {s.getsockname()[1] for s in held} & set(ports)
    finally:
        for s in held:
            s.close()
    for p in ports:  # and the service can bind each
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
