"""api/admission.py: at most `capacity` uploads inside at once, `backlog` more waiting, the rest refused with 429."""

from __future__ import annotations

import asyncio

import pytest

from clip_filter.api.admission import UploadGate
from clip_filter.core.errors import OverloadedError


async def _flood(gate: UploadGate, requests: int) -> tuple[list[str], list[int]]:
    """`requests` tasks entering the gate at once; each holds its place until released. Outcomes in order."""
    release = asyncio.Event()
    inside: list[int] = []  # how many were inside whenever one entered
    outcomes: list[str] = [""] * requests
    now_inside = 0

    async def upload(i: int) -> None:
        nonlocal now_inside
        try:
            async with gate.admit():
                now_inside += 1
                inside.append(now_inside)
                await release.wait()
                now_inside -= 1
            outcomes[i] = "done"
        except OverloadedError as exc:
            outcomes[i] = f"{exc.status} {exc.code} {exc.retry_after}"

    tasks = [asyncio.create_task(upload(i)) for i in range(requests)]
    while gate.active + gate.waiting + gate.refused < requests:  # every task has entered or been refused
        await asyncio.sleep(0)
    assert (gate.active, gate.waiting) == (
        min(requests, gate.capacity),
        max(0, min(requests - gate.capacity, gate.backlog)),
    )
    release.set()
    await asyncio.gather(*tasks)
    return outcomes, inside


@pytest.mark.parametrize(("capacity", "backlog", "requests"), [(2, 3, 10), (1, 0, 4), (3, 10, 8)])
def test_the_gate_bounds_concurrency_and_refuses_beyond_the_backlog(capacity, backlog, requests):
    gate = UploadGate("uploads", capacity, backlog)
    outcomes, inside = asyncio.run(_flood(gate, requests))
    admitted = min(requests, capacity + backlog)
    assert outcomes[:admitted] == ["done"] * admitted  # first come, first admitted
    assert outcomes[admitted:] == ["429 overloaded 1"] * (requests - admitted)
    assert max(inside) == capacity == gate.peak_active or requests < capacity
    assert (gate.admitted, gate.refused, gate.active, gate.waiting) == (admitted, requests - admitted, 0, 0)


def test_a_refusal_names_the_gate_and_its_limits():
    gate = UploadGate("job uploads", 1, 0)

    async def second() -> None:
        async with gate.admit():
            pass

    async def main() -> str:
        async with gate.admit():
            with pytest.raises(OverloadedError) as refused:
                await asyncio.create_task(second())  # another request (each runs in its own task)
            return refused.value.message

    assert asyncio.run(main()) == "Too many job uploads are being processed (1 at once, 0 waiting); retry shortly."


def test_a_cancelled_waiter_gives_its_backlog_place_back():
    gate = UploadGate("uploads", 1, 1)

    async def main() -> None:
        hold = asyncio.Event()

        async def holder() -> None:
            async with gate.admit():
                await hold.wait()

        first = asyncio.create_task(holder())
        while gate.active < 1:
            await asyncio.sleep(0)
        waiter = asyncio.create_task(holder())
        while gate.waiting < 1:
            await asyncio.sleep(0)
        waiter.cancel()  # the client went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.active, gate.waiting) == (1, 0)
        hold.set()
        await first
        async with gate.admit():  # the place is free again
            assert gate.active == 1

    asyncio.run(main())
