"""Long operations as org.wkd1.Job objects: RewrapAll's progress, outcome and bounds.

A job object mirrors one task: its progress properties change as the backend reports,
Completed is signalled once at the end, and the finished object stays on the bus for
JOB_LINGER_SECONDS so that a client can read the outcome. At most MAX_RUNNING_JOBS run at
once and at most MAX_FINISHED_JOBS finished ones are kept (wkd/bus/limits.py). Nothing here
carries key material: RewrapAllResult only counts and names volumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast.service import ServiceInterface

from wkd.bus.api import API, JOB, job_path
from wkd.bus.limits import JOB_LINGER_SECONDS, MAX_FINISHED_JOBS, MAX_RUNNING_JOBS
from wkd.bus.members import exported, signal, variants
from wkd.errors import Failed, LimitExceeded, WkdError
from wkd.model import RewrapAllResult

log = logging.getLogger("wkd.bus.jobs")


@exported(JOB)
class JobObject(ServiceInterface):
    """org.wkd1.Job at /org/wkd1/job/<n>: one long operation and its progress."""

    def __init__(self, number: int, operation: str, started_by: int) -> None:
        super().__init__(JOB)
        self.path = job_path(number)
        self._operation = operation
        self._started_by = started_by
        self._state = "running"
        self._done = 0
        self._total = 0
        self._current = ""
        self._error = ""
        self._result: RewrapAllResult | None = None

    @property
    def running(self) -> bool:
        return self._state == "running"

    def property_value(self, name: str) -> Any:
        return self._values()[name]

    def _values(self) -> dict[str, Any]:
        return {"Operation": self._operation, "StartedBy": self._started_by,
                "State": self._state, "Progress": self._progress(), "Done": self._done,
                "Total": self._total, "Current": self._current, "ErrorName": self._error,
                "Result": self._result_value()}

    def variants(self) -> dict[str, Any]:
        return variants(API.interface(JOB), self._values())

    def progress(self, done: int, total: int, current: str) -> None:
        before = self._values()
        self._done, self._total, self._current = done, total, current
        self._emit_changes(before)

    def finish(self, result: RewrapAllResult | None, error_name: str) -> None:
        before = self._values()
        self._result = result
        self._error = error_name
        success = result is not None and not result.failed and not error_name
        self._state = "completed" if success else "failed"
        if result is not None:
            self._total = self._done = result.total
        self._current = ""
        self._emit_changes(before)
        self.completed(success, error_name, self._done,
                       len(result.failed) if result is not None else 0)

    def _emit_changes(self, before: dict[str, Any]) -> None:
        changed = {k: v for k, v in self._values().items() if before[k] != v}
        if changed:
            self.emit_properties_changed(changed)

    def _progress(self) -> float:
        if self._state == "completed":
            return 1.0
        return self._done / self._total if self._total else 0.0

    def _result_value(self) -> list[Any]:
        r = self._result
        if r is None:
            return [0, 0, 0, []]
        return [r.total, r.rewrapped, r.skipped, [[u, n] for u, n in r.failed]]

    @signal(JOB, "Completed")
    def completed(self, success: bool, error_name: str, done: int, failed: int) -> list[Any]:
        return [success, error_name, done, failed]


Publish = Callable[[JobObject], None]


class Jobs:
    """The running and recently finished jobs; `publish`/`unpublish` put them on the bus."""

    def __init__(self, publish: Publish, unpublish: Publish) -> None:
        self._publish, self._unpublish = publish, unpublish
        self._numbers = itertools.count(1)
        self._jobs: dict[str, JobObject] = {}  # insertion order = age
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, operation: str, started_by: int,
              work: Callable[[JobObject], Awaitable[RewrapAllResult]]) -> JobObject:
        """Publish a job and run `work` for it; raise LimitExceeded when too many run."""
        if sum(1 for j in self._jobs.values() if j.running) >= MAX_RUNNING_JOBS:
            raise LimitExceeded(f"{MAX_RUNNING_JOBS} jobs are running already; wait for one "
                                "to finish")
        finished = [j for j in self._jobs.values() if not j.running]
        for old in finished[:max(0, len(finished) + 1 - MAX_FINISHED_JOBS)]:
            self._drop(old)
        job = JobObject(next(self._numbers), operation, started_by)
        self._jobs[job.path] = job
        self._publish(job)
        task = asyncio.create_task(self._run(job, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: JobObject,
                   work: Callable[[JobObject], Awaitable[RewrapAllResult]]) -> None:
        result: RewrapAllResult | None = None
        error_name = ""
        try:
            result = await work(job)
        except WkdError as e:
            error_name = e.dbus_name
            log.warning("%s job %s failed: %s", job.property_value("Operation"), job.path,
                        e.message)
        except Exception:
            error_name = Failed.dbus_name
            log.exception("internal error in job %s", job.path)
        # Progress callbacks queued from a worker thread land before the final state.
        await asyncio.sleep(0)
        job.finish(result, error_name)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(JOB_LINGER_SECONDS)
        self._drop(job)

    def _drop(self, job: JobObject) -> None:
        if self._jobs.pop(job.path, None) is not None:
            self._unpublish(job)

    async def close(self) -> None:
        """Stop every job (RewrapAll is resumable: the next start reconciles)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
