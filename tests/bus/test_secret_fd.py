"""Secrets cross the bus as file descriptors, and no descriptor a client sends stays open in
the daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

from dbus_fast import Message, MessageType, Variant

from tests.bus.test_cli import wkdctl

PASSPHRASE = b"recovery horse battery staple"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_recovery_passphrase_travels_as_fd_and_opens_the_volume(wkd_daemon, image, tmp_path):
    secret = tmp_path / "recovery"
    secret.write_bytes(PASSPHRASE)
    cap = tmp_path / "bus.pcap"
    with open(cap, "wb") as f:
        mon = subprocess.Popen(["busctl", f"--address={wkd_daemon.address}", "capture"],
                               stdout=f, stderr=subprocess.DEVNULL)
    try:
        r = wkdctl(wkd_daemon.address, "format", image, "--recovery-passphrase-file",
                   str(secret))
        assert r.returncode == 0, r.stderr
    finally:
        mon.send_signal(signal.SIGINT)
        mon.wait(10)
    data = cap.read_bytes()
    assert b"recovery-passphrase-fd" in data, "the capture did not see the Format call"
    assert PASSPHRASE not in data, "the passphrase itself crossed the bus"
    # The keyslot works with plain cryptsetup: the HSM-less way in for the administrator.
    res = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", str(secret),
                          image], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not it")
    res = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", str(wrong),
                          image], capture_output=True, text=True)
    assert res.returncode != 0


async def test_passed_descriptors_are_closed(wkd_daemon, bus):
    pid = wkd_daemon.proc.pid
    before = _open_fds(pid)
    for _ in range(20):
        r, w = os.pipe()
        os.write(w, b"x")
        os.close(w)
        # An fd sent to a method that takes none, inside the options: refused before it is
        # dispatched, and closed.
        reply = await bus.call(Message(
            destination="org.wkd1", path="/org/wkd1", interface="org.wkd1.Manager",
            member="ListVolumes", signature="a{sv}", body=[{"junk": Variant("h", 0)}],
            unix_fds=[r]))
        os.close(r)
        assert reply is not None and reply.message_type is MessageType.ERROR
        assert reply.error_name == "org.wkd1.Error.InvalidArgument"
        assert "takes no file descriptors" in reply.body[0]
    await asyncio.sleep(0.2)
    assert _open_fds(pid) <= before + 2, "the daemon kept descriptors its callers sent"
