"""The swarm's gate (coordinator.gate): a bound on the swarm's requests in progress, with the
trainer's, verifier's and operator's routes never waiting for it."""

from __future__ import annotations

import asyncio

import pytest
from coord_harness import OPERATOR_TOKEN

from coordinator.errors import RateLimited
from coordinator.gate import SwarmGate
from protocol.messages import KIND_HEARTBEAT, Heartbeat


def run(coro):
    return asyncio.run(coro)


async def request(gate: SwarmGate, got: list, name, wait: asyncio.Event | None = None, key: str = "") -> None:
    """A swarm request from address `key`: take a place, note `name` in `got`, hold the place
    until `wait` is set."""
    async with gate.place(key):
        got.append(name)
        if wait is not None:
            await wait.wait()


def test_places_are_bounded_and_handed_on_first_come_first_served() -> None:
    async def main() -> None:
        gate = SwarmGate(places=2, waiting=8, max_wait_s=5)
        order: list[int] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(request(gate, order, i, release)) for i in range(5)]
        await asyncio.sleep(0.05)
        assert order == [0, 1] and gate.busy == 2 and gate.n_waiting == 3
        release.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert gate.busy == 0 and not gate.n_waiting and not gate.queues

    run(main())


def test_waiting_addresses_are_served_in_turn() -> None:
    """One address with five requests waiting and another with one: the second address's
    request gets the next place but one, not the sixth."""
    async def main() -> None:
        gate = SwarmGate(places=1, waiting=16, max_wait_s=5)
        hold = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(request(gate, order, "a0", hold, key="10.0.0.1"))
        await asyncio.sleep(0.01)
        crowd = [asyncio.create_task(request(gate, order, f"a{i}", key="10.0.0.1")) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        other = asyncio.create_task(request(gate, order, "b1", key="10.0.0.2"))
        await asyncio.sleep(0.01)
        hold.set()
        await asyncio.gather(first, other, *crowd)
        assert order == ["a0", "a1", "b1", "a2", "a3", "a4", "a5"]
        assert gate.busy == 0 and not gate.queues

    run(main())


def test_a_full_queue_and_a_long_wait_are_answered_busy() -> None:
    async def main() -> None:
        gate = SwarmGate(places=1, waiting=1, max_wait_s=0.2)
        hold = asyncio.Event()
        h = asyncio.create_task(request(gate, [], "holder", hold))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(gate.place().__aenter__())
        await asyncio.sleep(0.01)
        with pytest.raises(RateLimited) as full:  # one waits already: no room in the queue
            await gate.place().__aenter__()
        assert full.value.reason == "busy" and full.value.retry_after_s >= 1
        with pytest.raises(RateLimited) as late:  # the waiter's time runs out
            await waiter
        assert late.value.reason == "busy"
        assert not gate.n_waiting and not gate.queues and gate.busy == 1
        hold.set()
        await h
        assert gate.busy == 0

    run(main())


def test_a_cancelled_waiter_leaves_no_trace_and_a_handed_place_goes_on() -> None:
    async def main() -> None:
        gate = SwarmGate(places=1, waiting=8, max_wait_s=5)
        hold = asyncio.Event()
        got: list[str] = []
        first = asyncio.create_task(request(gate, got, "first", hold))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(request(gate, got, "gone"))
        last = asyncio.create_task(request(gate, got, "last"))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while waiting
        await asyncio.sleep(0.01)
        assert gate.n_waiting == 1
        hold.set()
        await asyncio.gather(first, last)
        assert got == ["first", "last"] and gate.busy == 0

        # cancelled just after the place was handed to it: the place goes to the next waiter
        hold2 = asyncio.Event()
        a = asyncio.create_task(request(gate, got, "a", hold2))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(request(gate, got, "b"))
        c = asyncio.create_task(request(gate, got, "c"))
        await asyncio.sleep(0.01)
        hold2.set()
        await asyncio.sleep(0)  # a gives its place to b's future; b has not run yet
        b.cancel()
        await asyncio.gather(a, c)
        assert "c" in got and gate.busy == 0 and not gate.n_waiting and not gate.queues

    run(main())


def test_set_aside_gives_the_place_back_while_waiting() -> None:
    async def main() -> None:
        gate = SwarmGate(places=1, waiting=8, max_wait_s=5)
        room = asyncio.Event()
        got: list[str] = []

        async def long_poll() -> None:
            async with gate.place():
                async with gate.set_aside():
                    await room.wait()
                got.append("long-poll")

        lp = asyncio.create_task(long_poll())
        await asyncio.sleep(0.01)
        await asyncio.wait_for(request(gate, got, "quick"), 1)  # not blocked by the held long-poll
        room.set()
        await lp
        assert got == ["quick", "long-poll"] and gate.busy == 0

        async with gate.set_aside():  # outside a place: nothing to give
            assert gate.busy == 0

    run(main())


def test_the_operators_roles_pass_a_full_gate(make_swarm) -> None:
    """Every place taken and no waiting room: the swarm's routes are answered 429 busy, the
    trainer's, the verifier's and the operator's are served."""
    s = make_swarm(limits={"swarm_in_flight": 1, "swarm_waiting": 0})
    w = s.new_worker()
    s.publish(1)
    gate = s.server.server.config.app.state.gate
    gate.busy = gate.places  # as if the swarm held every place
    try:
        r = s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(status="x"), w)
        assert r.status_code == 429 and r.json()["reason"] == "busy" and "retry-after" in r.headers
        assert s.http.get("/v1/run").status_code == 429
        assert s.http.get("/v1/stats").status_code == 429
        assert s.http.get("/health").status_code == 200
        assert s.http.get("/v1/stats", headers={"authorization": f"Bearer {OPERATOR_TOKEN}"}).status_code == 200
        assert s.batch().status_code == 200
        assert s.claim() == []  # asserts 200 itself
        assert s.publish(2).status_code == 200
    finally:
        gate.busy = 0
    assert s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(status="x"), w).status_code == 200
    assert s.metric("swarmrl_coordinator_rejections_total", reason="busy") >= 3
