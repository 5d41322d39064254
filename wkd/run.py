"""The one wrapper through which wkd starts subprocesses.

Environment is allow-listed (a caller's LD_PRELOAD or SOFTHSM2_CONF never leaks in by accident),
LANG is C.UTF-8 so output is parseable, stdin is /dev/null, and the command line is logged at debug
level. Never pass a secret on a command line: /proc/<pid>/cmdline is world-readable.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence

log = logging.getLogger("wkd.run")

_KEEP_ENV = ("PATH", "SOFTHSM2_CONF", "SYSTEMD_LOG_LEVEL", "TMPDIR")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    child_env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    child_env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    child_env["LANG"] = "C.UTF-8"
    if env:
        child_env.update(env)
    log.debug("run: %s", " ".join(argv))
    return subprocess.run(
        list(argv),
        input=input_bytes,
        stdin=None if input_bytes is not None else subprocess.DEVNULL,
        capture_output=True,
        env=child_env,
        timeout=timeout,
        check=check,
    )
