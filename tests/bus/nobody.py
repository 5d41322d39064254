"""Run a piece of client code as uid 65534 (nobody) in a forked child.

Forked, not exec'ed: the interpreter may live where nobody cannot read it (a pyenv under
/root), so the child keeps the parent's loaded modules, drops its groups and uids, and runs
`fn` (which may use asyncio.run: asyncio gives a forked child a loop of its own). Everything
`fn` needs must be imported before the fork (nobody may not be able to import it after).
The result travels back as JSON through a pipe; the parent awaits it in a worker thread so
its own event loop (a fake polkit, say) keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from collections.abc import Callable
from typing import Any

# Loaded here for the child, which may not be able to import anything once it is nobody.
import dbus_fast.aio
import dbus_fast.auth  # noqa: F401

NOBODY = 65534


def _drop() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def _collect(pid: int, fd: int) -> tuple[int, bytes]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


async def run_as_nobody(fn: Callable[..., Any], *args: Any, keep_fds: tuple[int, ...] = ()
                        ) -> Any:
    """fn(*args) in a child running as nobody; its (JSON-able) result, or AssertionError
    with the child's traceback. `keep_fds` stay open in the child (others may too: the
    child closes nothing, it only never touches what it did not create)."""
    del keep_fds  # inherited by fork anyway; named for the reader
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)
            _drop()
            out = json.dumps({"result": fn(*args)})
        except BaseException:
            out = json.dumps({"error": traceback.format_exc()})
            code = 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    status, data = await asyncio.to_thread(_collect, pid, r)
    answer = json.loads(data or b'{"error": "no output"}')
    if status != 0 or "error" in answer:
        raise AssertionError(f"the child (uid {NOBODY}) failed, status {status}:\n"
                             f"{answer.get('error')}")
    return answer["result"]
