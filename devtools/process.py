"""Stopping a child process: the one terminate -> wait -> kill sequence of the tree."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str],
                 timeout: float = 30.0) -> int | None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL; reap it. Returns its exit status
    (None if it could not be reaped, which only a process stuck in the kernel does)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
