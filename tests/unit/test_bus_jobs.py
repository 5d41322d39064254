"""Job objects and their bounds (wkd/bus/jobs.py), with no bus: publishing is recorded."""

from __future__ import annotations

import asyncio

import pytest

from wkd.bus.jobs import JobObject, Jobs
from wkd.bus.limits import MAX_FINISHED_JOBS, MAX_RUNNING_JOBS
from wkd.errors import KekNotFound, LimitExceeded
from wkd.model import RewrapAllResult


class Board:
    def __init__(self) -> None:
        self.published: list[str] = []
        self.unpublished: list[str] = []

    def publish(self, job: JobObject) -> None:
        self.published.append(job.path)

    def unpublish(self, job: JobObject) -> None:
        self.unpublished.append(job.path)


async def test_running_jobs_are_bounded_and_finished_ones_evicted_oldest_first():
    board = Board()
    jobs = Jobs(board.publish, board.unpublish)
    gate = asyncio.Event()

    async def slow(job: JobObject) -> RewrapAllResult:
        await gate.wait()
        return RewrapAllResult(total=1, rewrapped=1, skipped=0, failed=())

    running = [jobs.start("rewrap-all", 0, slow) for _ in range(MAX_RUNNING_JOBS)]
    with pytest.raises(LimitExceeded):
        jobs.start("rewrap-all", 0, slow)
    gate.set()
    for _ in range(50):
        await asyncio.sleep(0)
    assert all(not j.running for j in running)
    assert all(j.property_value("State") == "completed" for j in running)

    async def quick(job: JobObject) -> RewrapAllResult:
        return RewrapAllResult(total=0, rewrapped=0, skipped=0, failed=())

    for _ in range(MAX_FINISHED_JOBS + 3):
        jobs.start("rewrap-all", 0, quick)
        for _ in range(5):
            await asyncio.sleep(0)
    # Finished jobs beyond the bound went, oldest first; the first two are among them.
    assert board.unpublished[:2] == [j.path for j in running]
    assert len(board.published) - len(board.unpublished) <= MAX_FINISHED_JOBS
    await jobs.close()


async def test_a_failed_job_says_why_and_carries_no_details():
    board = Board()
    jobs = Jobs(board.publish, board.unpublish)

    async def fails(job: JobObject) -> RewrapAllResult:
        job.progress(1, 3, "some-uuid")
        raise KekNotFound("no KEK labelled 'x'")

    job = jobs.start("rewrap-all", 1000, fails)
    for _ in range(10):
        await asyncio.sleep(0)
    assert job.property_value("State") == "failed"
    assert job.property_value("ErrorName") == "org.wkd1.Error.KekNotFound"
    assert job.property_value("StartedBy") == 1000
    assert job.property_value("Current") == ""
    await jobs.close()
