"""No secret on the bus: capture all traffic of a Format -> Unlock(verify) -> Rewrap -> Lock
cycle and search it for the volume key (raw, hex, base64) and for the wrapped blob."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import signal
import subprocess

import pytest
from dbus_fast import Message, MessageType, Variant

from tests.bus.conftest import CallError, call, get_prop

PASSPHRASE = b"recovery-passphrase-for-the-leak-test"
LABEL = "leak-label-payload"


def _volume_key(image: str, tmp_path) -> bytes:
    kf = tmp_path / "pass"
    kf.write_bytes(PASSPHRASE)
    r = subprocess.run(["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode",
                        f"--key-file={kf}", image], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot dump the volume key with cryptsetup: {r.stderr.strip()}")
    m = re.search(r"MK dump:\s*((?:[0-9a-f]{2}\s*)+)", r.stdout)
    assert m, r.stdout
    return binascii.unhexlify(re.sub(r"\s", "", m.group(1)))


def _wrapped_blobs(image: str) -> list[str]:
    r = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", image],
                       capture_output=True, text=True, check=True)
    tokens = json.loads(r.stdout)["tokens"]
    out: list[str] = []
    for tok in tokens.values():
        if tok.get("type") != "wkd":
            continue
        for v in tok.values():
            if isinstance(v, str) and len(v) >= 40:
                out.append(v)
    return out


def _needles(data: bytes) -> list[bytes]:
    return [data, data.hex().encode(), data.hex().upper().encode(),
            base64.b64encode(data), base64.urlsafe_b64encode(data),
            base64.b64encode(data).rstrip(b"=")]


async def test_no_key_material_on_the_bus(wkd_daemon, bus, image, tmp_path):
    cap = tmp_path / "bus.pcap"
    with open(cap, "wb") as f:
        proc = subprocess.Popen(["busctl", f"--address={wkd_daemon.address}", "capture"],
                                stdout=f, stderr=subprocess.PIPE)
    try:
        await asyncio.sleep(0.5)
        # The recovery passphrase travels as a descriptor (the ay route is refused by
        # default); the label proves the capture sees the payload of the calls.
        r, w = os.pipe()
        os.write(w, PASSPHRASE)
        os.close(w)
        try:
            reply = await bus.call(Message(
                destination="org.wkd1", path="/org/wkd1", interface="org.wkd1.Manager",
                member="Format", signature="ssa{sv}",
                body=[image, "", {"recovery-passphrase-fd": Variant("h", 0),
                                  "label": Variant("s", LABEL)}], unix_fds=[r]))
        finally:
            os.close(r)
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply.body
        path = reply.body[0]
        blobs_before = _wrapped_blobs(image)
        await call(bus, "Unlock", "sa{sv}", [path, {"verify-only": Variant("b", True)}])
        try:
            await call(bus, "CreateKek", "sa{sv}", ["leak-kek", {}])
        except CallError as e:
            assert e.name == "org.wkd1.Error.KekExists"
        await call(bus, "Rewrap", "ssa{sv}", [path, "leak-kek", {}])
        try:
            await call(bus, "Lock", "sa{sv}", [path, {}])
        except CallError as e:
            assert e.name.startswith("org.wkd1.Error.")
        await get_prop(bus, path, "org.wkd1.Volume", "Kek")
        await asyncio.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    data = cap.read_bytes()
    # Everything the daemon logged so far (debug level, stderr) is searched too.
    log = wkd_daemon.log_text().encode()
    assert b"volume" in log.lower()
    data_and_log = [data, log]
    # The capture did see the cycle (else zero hits would prove nothing).
    assert b"org.wkd1.Manager" in data and b"Rewrap" in data and b"leak-kek" in data
    assert os.path.getsize(cap) > 1000
    # ...and sees payload bytes: the label the test itself sent is there; the passphrase,
    # passed as a descriptor, is not.
    assert LABEL.encode() in data
    assert PASSPHRASE not in data
    vk = _volume_key(image, tmp_path)
    assert len(vk) in (32, 64)
    blobs = blobs_before + _wrapped_blobs(image)
    assert blobs, "no wrapped blob found in the token"
    for where in data_and_log:
        for needle in _needles(vk):
            assert needle not in where
        for b64 in blobs:
            assert b64.encode() not in where
            try:
                raw = base64.b64decode(b64)
            except binascii.Error:
                continue
            for needle in _needles(raw):
                assert needle not in where
