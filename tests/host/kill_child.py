"""Child process of the kill test: one rewrap, killed by itself at a named step or by the parent.

    python3 -m tests.host.kill_child STATE_DIR IMAGE NEW_KEK [KILL_AT_STEP]

Prints READY once the engine is up (start-up reconciliation done), waits for a line on stdin,
then rewraps and prints DONE <seconds>. With KILL_AT_STEP it SIGKILLs itself at that checkpoint,
the way a power cut or the OOM killer would stop it: no cleanup, no finally blocks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from tests.host import engine_helpers as h


def main() -> None:
    state_dir, image, new_kek = sys.argv[1:4]
    kill_at = sys.argv[4] if len(sys.argv) > 4 else None

    def checkpoint(step: str) -> None:
        if step == kill_at or (kill_at == "removed" and step.startswith("removed-")):
            os.kill(os.getpid(), signal.SIGKILL)

    async def run() -> None:
        eng = h.new_engine(Path(state_dir))
        eng._checkpoint = checkpoint
        await eng.start()
        print("READY", flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        await eng.rewrap(image, new_kek)
        print(f"DONE {time.perf_counter() - t0:.6f}", flush=True)
        await eng.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
