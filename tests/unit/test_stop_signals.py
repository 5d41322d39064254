"""Stop signals (wkd/system/stop.py): recorded from install on, and cancelling the task they
are bound to, at once if one came before."""

from __future__ import annotations

import asyncio
import os
import signal

from wkd.system.stop import StopSignals


def _restore(old: dict[int, object]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def test_a_signal_before_the_loop_is_recorded_not_fatal():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopSignals().install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == signal.SIGTERM

        async def main() -> str:
            task = asyncio.current_task()
            assert task is not None
            with stop.cancelling(task):
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    return "cancelled at once"
            return "not cancelled"

        assert asyncio.run(main()) == "cancelled at once"
    finally:
        _restore(old)


def test_a_signal_while_the_loop_waits_cancels_the_task_once():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopSignals().install()

        async def main() -> list[str]:
            task = asyncio.current_task()
            assert task is not None
            seen: list[str] = []
            loop = asyncio.get_running_loop()
            with stop.cancelling(task):
                loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    seen.append("cancelled")
                    task.uncancel()
                # A second request during the clean-up does not cancel the clean-up.
                loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
                await asyncio.sleep(0.2)
                seen.append("clean-up finished")
            return seen

        assert asyncio.run(main()) == ["cancelled", "clean-up finished"]
        assert stop.received == signal.SIGTERM
        # After the loop, the handler is still ours: a late signal is only recorded.
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        _restore(old)
