"""Session-wide guard: no secret any test learned may appear in any log record of the run.

Tests that learn a volume key or wrapped blob through a test-only path register it with
`register_secret`; every log record emitted in this process (all loggers, DEBUG and up, with
its structured fields) is kept, and the session ends with an error if any registered secret
appears in it raw, as hex or as base64. Daemon subprocesses are checked by their own tests
(tests/bus/test_noleak.py searches the daemon's debug log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.host.engine_helpers import SEEN_SECRETS, forms

# Hypothesis's default 200 ms deadline per example is a wall-clock race on 2 shared cores (a
# VM beside the suite made a pure token-parsing example take 344 ms): no deadline.
settings.register_profile("wkd", deadline=None)
settings.load_profile("wkd")


class _KeepAll(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string is not this guard's business
            msg = str(record.msg)
        self.lines.append(f"{msg} {record.__dict__!r}")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    handler = _KeepAll()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(old)
    text = "\n".join(handler.lines).encode(errors="surrogateescape")
    hits = sum(1 for secret in SEEN_SECRETS for form in forms(secret) if form in text)
    assert hits == 0, f"{hits} secret form(s) found in this run's log records"
    print(f"\nno-leak guard: {len(SEEN_SECRETS)} secrets, {len(handler.lines)} log records, "
          "0 hits")
