"""Group commit: work for one key that arrives while that key's work is being done waits,
then is done together by one thread.

Events of one deployment are applied one at a time anyway (its row is locked, and SQLite
has one writer). When hundreds of agents report at once, doing each event in its own
transaction made every event pay for a transaction, a snapshot load and a commit; taking
everything queued in one transaction pays for them once per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batches", "Job"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(eq=False)
class Job(Generic[ItemT, ResultT]):
    """One queued item and, once its batch ran, its result or the error that ended it."""

    item: ItemT
    done: bool = False
    result: ResultT | None = None
    error: BaseException | None = None


@dataclass
class _Lane(Generic[ItemT, ResultT]):
    runner: threading.Lock = field(default_factory=threading.Lock)
    waiting: list[Job[ItemT, ResultT]] = field(default_factory=list)
    users: int = 0


class Batches(Generic[ItemT, ResultT]):
    """Per-key queues whose items are run in batches by whichever caller gets there first."""

    def __init__(self, max_batch: int = 256) -> None:
        self._guard = threading.Lock()
        self._lanes: dict[Hashable, _Lane[ItemT, ResultT]] = {}
        self._max_batch = max_batch

    def run(
        self,
        key: Hashable,
        item: ItemT,
        work: Callable[[Sequence[Job[ItemT, ResultT]]], None],
    ) -> ResultT | None:
        """Queue ``item`` under ``key`` and return its result once a batch holding it ran.

        ``work`` gets the batch and must set ``done`` and ``result`` or ``error`` on every
        job; one that it leaves undone gets a RuntimeError.
        """
        job: Job[ItemT, ResultT] = Job(item)
        with self._guard:
            lane = self._lanes.setdefault(key, _Lane())
            lane.users += 1
            lane.waiting.append(job)
        try:
            while not job.done:
                with lane.runner:
                    if job.done:
                        break
                    with self._guard:
                        batch = lane.waiting[: self._max_batch]
                        del lane.waiting[: self._max_batch]
                    _run(batch, work)
        finally:
            with self._guard:
                lane.users -= 1
                if not lane.users:
                    del self._lanes[key]
        if job.error is not None:
            raise job.error
        return job.result


def _run(
    batch: Sequence[Job[ItemT, ResultT]],
    work: Callable[[Sequence[Job[ItemT, ResultT]]], None],
) -> None:
    try:
        work(batch)
    except BaseException as error:
        for job in batch:
            if not job.done:
                job.error, job.done = error, True
        if not isinstance(error, Exception):
            raise
    for job in batch:
        if not job.done:
            job.error = RuntimeError("the batch ended without running this item")
            job.done = True
