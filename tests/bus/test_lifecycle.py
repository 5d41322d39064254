"""Daemon life cycle on the bus: a clean stop on SIGTERM, a failing exit when the bus goes
away (so systemd's Restart=on-failure brings it back)."""

from __future__ import annotations

import signal
import tempfile

from tests.bus.conftest import start_daemon
from devtools.privatebus import start_private_bus


def test_sigterm_is_a_clean_stop() -> None:
    with tempfile.TemporaryDirectory(prefix="wkd-life-") as d:
        bus = start_private_bus(f"{d}/bus")
        try:
            daemon = start_daemon(bus.address, d)
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(30) == 0, daemon.log_text()[-2000:]
        finally:
            bus.stop()


def test_losing_the_bus_is_a_failure_exit() -> None:
    with tempfile.TemporaryDirectory(prefix="wkd-life-") as d:
        bus = start_private_bus(f"{d}/bus")
        daemon = start_daemon(bus.address, d)
        bus.stop()
        rc = daemon.proc.wait(30)
        assert rc == 1, daemon.log_text()[-2000:]
        assert "connection was lost" in daemon.log_text()
