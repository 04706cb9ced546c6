"""The dynamic batcher with real threads and a real event loop (the batch function is plain Python)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clip_filter.core.errors import OverloadedError
from clip_filter.ml.batcher import DynamicBatcher


class Recorder:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list] = []
        self.gate = gate

    def __call__(self, payloads: list) -> list:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(payloads))
        return [p * 10 for p in payloads]


def test_concurrent_requests_are_coalesced_and_answered_in_order():
    recorder = Recorder()
    batcher = DynamicBatcher({"image": recorder}, max_batch=64, max_wait_s=0.05, max_queue=1000)

    async def main():
        return await asyncio.gather(*(batcher.submit("image", [i, i + 100]) for i in range(20)))

    results = asyncio.run(main())
    batcher.close()
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert sum(len(b) for b in recorder.batches) == 40
    assert len(recorder.batches) < 20, "concurrent requests should share model batches"


def test_batches_never_exceed_max_batch_and_kinds_never_mix():
    images, texts = Recorder(), Recorder()
    batcher = DynamicBatcher({"image": images, "text": texts}, max_batch=3, max_wait_s=0.02, max_queue=1000)

    async def main():
        return await asyncio.gather(
            batcher.submit("image", list(range(7))),
            batcher.submit("text", list(range(5))),
            batcher.submit("image", [9]),
        )

    got = asyncio.run(main())
    batcher.close()
    assert got == [[i * 10 for i in range(7)], [i * 10 for i in range(5)], [90]]
    assert all(len(b) <= 3 for b in images.batches + texts.batches)
    assert sorted(x for b in images.batches for x in b) == [0, 1, 2, 3, 4, 5, 6, 9]


def test_full_queue_is_refused_with_overloaded_error():
    gate = threading.Event()
    batcher = DynamicBatcher({"image": Recorder(gate)}, max_batch=1, max_wait_s=0.0, max_queue=2)

    async def main():
        first = asyncio.ensure_future(batcher.submit("image", [1]))
        await asyncio.sleep(0.1)  # the model thread is now blocked on the gate with item 1
        second = asyncio.ensure_future(batcher.submit("image", [2, 3]))
        await asyncio.sleep(0.05)
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit("image", [4])
        assert refused.value.status == 429 and refused.value.retry_after >= 1
        gate.set()
        return await first, await second

    assert asyncio.run(main()) == ([10], [20, 30])
    batcher.close()


def test_a_failing_batch_fails_its_requests_and_the_thread_survives():
    calls = {"n": 0}

    def flaky(payloads):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return payloads

    batcher = DynamicBatcher({"text": flaky}, max_batch=8, max_wait_s=0.0, max_queue=10)

    async def main():
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit("text", ["a"])
        return await batcher.submit("text", ["b"])

    assert asyncio.run(main()) == ["b"]
    batcher.close()


def test_blocking_submit_from_threads_shares_the_same_queue():
    recorder = Recorder()
    batcher = DynamicBatcher({"image": recorder}, max_batch=16, max_wait_s=0.02, max_queue=4)
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        results[i] = batcher.submit_blocking("image", [i, i, i])  # waits for room instead of failing

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    batcher.close()
    assert results == {i: [i * 10] * 3 for i in range(6)}


def test_an_item_that_finds_the_model_idle_does_not_wait_for_the_batch_window():
    recorder = Recorder()
    # A 60 s window: waiting for it would hang the test far beyond the 10 s allowed below.
    batcher = DynamicBatcher({"image": recorder}, max_batch=64, max_wait_s=60.0, max_queue=100)

    async def main():
        return await asyncio.wait_for(batcher.submit("image", [7]), timeout=10)

    assert asyncio.run(main()) == [70]
    batcher.close()


def test_items_queued_behind_a_running_batch_are_batched_together():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = DynamicBatcher({"image": recorder}, max_batch=64, max_wait_s=0.05, max_queue=100)

    async def main():
        first = asyncio.ensure_future(batcher.submit("image", [0]))
        await asyncio.sleep(0.1)  # the model thread now runs [0], held by the gate
        rest = [asyncio.ensure_future(batcher.submit("image", [i])) for i in range(1, 9)]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    batcher.close()
    assert first == [0] and rest == [[i * 10] for i in range(1, 9)]
    assert recorder.batches == [[0], list(range(1, 9))]


def test_on_idle_runs_once_after_each_busy_spell():
    calls: list[float] = []
    batcher = DynamicBatcher(
        {"image": Recorder()},
        max_batch=8,
        max_wait_s=0.0,
        max_queue=100,
        on_idle=lambda: calls.append(time.monotonic()),
        idle_after_s=0.05,
    )

    def wait_for_calls(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    time.sleep(0.3)
    assert calls == [], "no batch ran yet: nothing to hand back"
    asyncio.run(batcher.submit("image", [1]))
    wait_for_calls(1)
    time.sleep(0.3)
    assert len(calls) == 1, "once per idle spell, not every idle_after_s"
    asyncio.run(batcher.submit("image", [2]))
    wait_for_calls(2)
    batcher.close()
    assert len(calls) == 2


def test_a_failing_on_idle_does_not_stop_the_model_thread():
    def broken() -> None:
        raise RuntimeError("boom")

    batcher = DynamicBatcher(
        {"image": Recorder()}, max_batch=8, max_wait_s=0.0, max_queue=100, on_idle=broken, idle_after_s=0.01
    )
    assert asyncio.run(batcher.submit("image", [1])) == [10]
    time.sleep(0.2)  # on_idle has failed by now
    assert asyncio.run(asyncio.wait_for(batcher.submit("image", [2]), timeout=10)) == [20]
    batcher.close()


def test_counters_record_batches_items_and_the_time_spent_running_them():
    def slow(payloads: list) -> list:
        time.sleep(0.1)
        return payloads

    batcher = DynamicBatcher({"image": slow}, max_batch=8, max_wait_s=0.0, max_queue=100)
    asyncio.run(batcher.submit("image", [1, 2, 3]))
    asyncio.run(batcher.submit("image", [4]))
    batcher.close()
    assert (batcher.batches_run, batcher.items_run) == (2, 4)
    assert batcher.busy_s >= 0.2
