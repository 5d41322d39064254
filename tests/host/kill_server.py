"""Fork server for the kill tests: imports wkd once, then forks one operation per request.

    python3 -m tests.host.kill_server STATE_DIR IMAGE

Starting a Python process with wkd, python-pkcs11 and libcryptsetup loaded costs most of a
second; the kill tests need hundreds of operations to kill. So this process imports
everything once (no thread, no HSM session: neither would survive a fork) and, for each
request line on stdin, forks a child that starts an engine (as the daemon starts: the
start-up work is part of what is tested) and runs one operation:

    go format STEP       Format IMAGE (force)
    go rewrap KEK STEP   Rewrap IMAGE to KEK, after a line "proceed" on stdin

STEP is a checkpoint name at which the child SIGKILLs itself (as a power cut would stop it:
no cleanup, no finally blocks), or "-". This process prints "PID <pid>"; the child prints
"READY" once its engine is up (for rewrap it then waits for "proceed"), "DONE <seconds>"
after the operation; this process then prints "EXIT <wait status>". "quit" ends it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from tests.host import engine_helpers as h
from wkd.model import FormatOptions
from wkd.values import DevicePath, KekLabel


def say(line: str) -> None:
    """One write per line: the server and its child share the pipe, and a write of at most
    PIPE_BUF bytes is never interleaved with another (pipe(7))."""
    os.write(1, (line + "\n").encode())


def _read_line() -> str:
    """A line from fd 0, unbuffered: the server's buffered stdin must not swallow it."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def _child(state_dir: str, image: str, words: list[str]) -> None:
    op, step = words[0], words[-1]

    def checkpoint(name: str) -> None:
        if name == step or (step == "removed" and name.startswith("removed-")):
            os.kill(os.getpid(), signal.SIGKILL)

    async def run() -> None:
        eng = h.new_engine(Path(state_dir))
        eng.checkpoint = checkpoint
        await eng.start(discover=op == "rewrap")  # the daemon's start-up reconciliation
        say("READY")
        if op == "rewrap":
            _read_line()
        t0 = time.perf_counter()
        if op == "format":
            await eng.format(DevicePath(image), None, FormatOptions(force=True))
        else:
            await eng.rewrap(DevicePath(image), KekLabel(words[1]))
        say(f"DONE {time.perf_counter() - t0:.6f}")
        await eng.stop()

    asyncio.run(run())


def _warm_up() -> None:
    """Do once here what every child would otherwise pay for: the lazy imports of the HSM
    backend and a first event loop. Nothing that starts a thread or opens the HSM."""
    import wkd.hsm.pin
    import wkd.hsm.pkcs11
    import wkd.hsm.softhsm  # noqa: F401

    asyncio.run(asyncio.sleep(0))


def main() -> None:
    state_dir, image = sys.argv[1:3]
    _warm_up()
    say("SERVER")
    while True:
        words = _read_line().split()
        if words[:1] != ["go"]:
            break
        pid = os.fork()
        if pid == 0:
            try:
                _child(state_dir, image, words[1:])
            except BaseException as e:
                say(f"ERROR {type(e).__name__}: {e}")
                os._exit(1)
            os._exit(0)
        say(f"PID {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"EXIT {status}")


if __name__ == "__main__":
    main()
