"""Group commit by key: concurrent items for one key run together, each caller gets its own
result or error, and different keys never wait for each other."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from opendeploy.server.service.batches import Batches, Job


class Recorder:
    """Work that holds the first batch until released, recording every batch it ran."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.first_running = threading.Event()
        self.release = threading.Event()

    def __call__(self, jobs: Sequence[Job[int, int]]) -> None:
        self.batches.append([job.item for job in jobs])
        if len(self.batches) == 1:
            self.first_running.set()
            assert self.release.wait(10)
        for job in jobs:
            if job.item < 0:
                job.error = ValueError(f"negative: {job.item}")
            else:
                job.result = job.item * 10
            job.done = True


def _run_in_threads(
    batches: Batches[int, int], items: Sequence[int], work: Recorder, key: str = "d-1"
) -> tuple[list[threading.Thread], dict[int, object]]:
    results: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            results[item] = batches.run(key, item, work)
        except ValueError as error:
            results[item] = error

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    return threads, results


def test_items_queued_during_a_batch_run_together_and_get_their_own_results() -> None:
    batches: Batches[int, int] = Batches()
    work = Recorder()
    first, results = _run_in_threads(batches, [1], work)
    first[0].start()
    assert work.first_running.wait(10)
    others, more = _run_in_threads(batches, [2, 3, -4, 5], work)
    for thread in others:
        thread.start()
    while sum(len(lane.waiting) for lane in batches._lanes.values()) < 4:
        threading.Event().wait(0.01)
    work.release.set()
    for thread in first + others:
        thread.join(10)
    results.update(more)
    assert work.batches[0] == [1]
    assert sorted(work.batches[1]) == [-4, 2, 3, 5] and len(work.batches) == 2
    assert {k: v for k, v in results.items() if k > 0} == {1: 10, 2: 20, 3: 30, 5: 50}
    assert isinstance(results[-4], ValueError) and "negative: -4" in str(results[-4])
    assert batches._lanes == {}


def test_other_keys_do_not_wait() -> None:
    batches: Batches[int, int] = Batches()
    work = Recorder()
    held, _ = _run_in_threads(batches, [1], work, key="d-1")
    held[0].start()
    assert work.first_running.wait(10)
    assert batches.run("d-2", 7, work) == 70
    work.release.set()
    held[0].join(10)


def test_an_exception_fails_every_unfinished_item_of_its_batch() -> None:
    batches: Batches[int, int] = Batches()

    def broken(jobs: Sequence[Job[int, int]]) -> None:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):
        batches.run("d-1", 1, broken)


def test_work_that_forgets_an_item_reports_it() -> None:
    batches: Batches[int, int] = Batches()
    with pytest.raises(RuntimeError, match="without running this item"):
        batches.run("d-1", 1, lambda jobs: None)


def test_batches_are_capped() -> None:
    batches: Batches[int, int] = Batches(max_batch=2)
    work = Recorder()
    first, results = _run_in_threads(batches, [1], work)
    first[0].start()
    assert work.first_running.wait(10)
    others, more = _run_in_threads(batches, [2, 3, 4, 5, 6], work)
    for thread in others:
        thread.start()
    while sum(len(lane.waiting) for lane in batches._lanes.values()) < 5:
        threading.Event().wait(0.01)
    work.release.set()
    for thread in first + others:
        thread.join(10)
    assert [len(batch) for batch in work.batches] == [1, 2, 2, 1]
    assert {**results, **more} == {n: n * 10 for n in range(1, 7)}
