"""wkd.log: structured events, stderr fallback, journal native protocol, redaction, catalog."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from wkd import log as wlog
from wkd.log import MessageId, log_event
from wkd.model import Mechanism, WrappedKey
from wkd.secret import SecretKey

CATALOG = Path(__file__).resolve().parents[2] / "units" / "wkd.catalog"


@pytest.fixture
def logger():
    """A private logger with its own handlers, restored afterwards."""
    lg = logging.getLogger("wkd.test.log")
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


def stderr_logger(lg: logging.Logger) -> io.StringIO:
    buf = io.StringIO()
    lg.addHandler(wlog.StderrHandler(buf))
    return buf


def parse_native(payload: bytes) -> dict[str, str]:
    """Decode the journal native protocol (both field forms)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        nl = payload.index(b"\n", pos)
        line = payload[pos:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            pos = nl + 1
        else:
            (size,) = struct.unpack("<Q", payload[nl + 1:nl + 9])
            start = nl + 9
            fields[line.decode()] = payload[start:start + size].decode()
            assert payload[start + size:start + size + 1] == b"\n"
            pos = start + size + 1
    return fields


@pytest.fixture
def journal_socket(tmp_path):
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_message_ids_are_unique_128_bit_hex():
    values = [m.value for m in MessageId]
    assert len(set(values)) == len(values) == 11
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in values)


def test_log_event_stderr_line_carries_structured_fields(logger):
    buf = stderr_logger(logger)
    log_event(logger, MessageId.VOLUME_UNLOCKED, "Volume unlocked",
              volume_uuid="4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00", operation="unlock",
              result="ok", caller_uid=1000, caller_pid=4242, mapping="data")
    line = buf.getvalue()
    assert line.count("\n") == 1
    assert "info: Volume unlocked [" in line
    for expected in ("MESSAGE_ID=c3a325d30c854b25b8985cd77a9c9db3",
                     "WKD_VOLUME_UUID=4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00",
                     "WKD_OPERATION=unlock", "WKD_RESULT=ok", "WKD_CALLER_UID=1000",
                     "WKD_CALLER_PID=4242", "WKD_MAPPING=data"):
        assert expected in line


def test_optional_fields_are_omitted_and_values_quoted(logger):
    buf = stderr_logger(logger)
    log_event(logger, MessageId.OPERATION_FAILED, "Unlock failed", operation="unlock",
              result="failed", level=logging.ERROR, error="device is busy\nreally")
    line = buf.getvalue()
    assert "error: Unlock failed" in line
    assert "WKD_CALLER_UID" not in line and "WKD_VOLUME_UUID" not in line
    # A value with spaces/newline is quoted so the line stays one line and parseable.
    assert 'WKD_ERROR="device is busy\\nreally"' in line
    assert line.count("\n") == 1


def test_invalid_extra_field_name_is_refused(logger):
    stderr_logger(logger)
    with pytest.raises(ValueError, match="invalid journal field name"):
        log_event(logger, MessageId.VOLUME_LOCKED, "x", operation="lock", result="ok",
                  **{"bad-name": "v"})


def test_redaction_of_bytes_secret_and_wrapped_key(logger):
    buf = stderr_logger(logger)
    wrapped = WrappedKey(kek_label="kek0", kek_id="01", mechanism=Mechanism.AES_KEY_WRAP_PAD,
                         blob=b"\x11SECRETBLOB\x22", key_bytes=64)
    with SecretKey.from_bytes(bytearray(b"K" * 32)) as key:
        log_event(logger, MessageId.VOLUME_REWRAPPED, "Rewrapped", operation="rewrap",
                  result="ok", blob=b"\xde\xad", key=key, wrapped=wrapped)  # type: ignore[arg-type]
        logger.info("args: %s %s %r", bytearray(b"PIN1234"), key, b"rawbytes")
    out = buf.getvalue()
    assert "WKD_BLOB=<redacted>" in out
    assert "WKD_KEY=<redacted>" in out
    assert "WKD_WRAPPED=<redacted>" in out
    assert "args: <redacted> <redacted> '<redacted>'" in out
    for leak in ("SECRETBLOB", "PIN1234", "rawbytes", "dead", "KKKK", "\\xde"):
        assert leak not in out


def test_setup_logging_falls_back_to_stderr_without_journal(tmp_path, capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = wlog.setup_logging("debug", journal_socket=str(tmp_path / "absent"))
        assert isinstance(handler, wlog.StderrHandler)
        again = wlog.setup_logging("info", journal_socket=str(tmp_path / "absent"))
        # Idempotent: the first handler was replaced, not stacked.
        assert handler not in root.handlers and again in root.handlers
        log_event(logging.getLogger("wkd.engine"), MessageId.DAEMON_STARTED, "started",
                  operation="start", result="ok")
        err = capsys.readouterr().err
        assert "info: started [MESSAGE_ID=2564ba76cc724086b22346673eca8bac" in err
        with pytest.raises(ValueError, match="unknown log level"):
            wlog.setup_logging("loud")
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
                h.close()
        root.setLevel(saved[1])


def test_force_stderr_even_with_journal_socket(journal_socket):
    path, _ = journal_socket
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert isinstance(wlog.setup_logging(journal_socket=path), wlog.JournalHandler)
        assert isinstance(wlog.setup_logging(journal_socket=path, force_stderr=True),
                          wlog.StderrHandler)
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
                h.close()
        root.setLevel(saved[1])


def test_journal_handler_sends_native_protocol(logger, journal_socket):
    path, sock = journal_socket
    handler = wlog.JournalHandler(path)
    handler.addFilter(wlog.RedactFilter())
    logger.addHandler(handler)
    log_event(logger, MessageId.VOLUME_FORMATTED, "Formatted\nsecond line",
              volume_uuid="u-1", operation="format", result="ok", caller_uid=0,
              caller_pid=1, device="/dev/sdb", blob=b"x")  # type: ignore[arg-type]
    fields = parse_native(sock.recv(65536))
    assert fields["MESSAGE"] == "Formatted\nsecond line"
    assert fields["MESSAGE_ID"] == MessageId.VOLUME_FORMATTED.value
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "wkd"
    assert fields["WKD_VOLUME_UUID"] == "u-1"
    assert fields["WKD_OPERATION"] == "format"
    assert fields["WKD_RESULT"] == "ok"
    assert fields["WKD_CALLER_UID"] == "0"
    assert fields["WKD_CALLER_PID"] == "1"
    assert fields["WKD_DEVICE"] == "/dev/sdb"
    assert fields["WKD_BLOB"] == "<redacted>"
    # stacklevel: the entry names this test as the call site, not wkd/log.py.
    assert fields["CODE_FILE"].endswith("test_log.py")


def test_journal_handler_large_entry_goes_through_memfd(logger, journal_socket):
    path, sock = journal_socket
    logger.addHandler(wlog.JournalHandler(path))
    big = "A" * (4 * 1024 * 1024)  # larger than any AF_UNIX datagram
    logger.warning("%s", big)
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1024, 1)
    assert msg == b"" and len(fds) == 1
    try:
        data = os.pread(fds[0], 8 * 1024 * 1024, 0)
    finally:
        os.close(fds[0])
    fields = parse_native(data)
    assert fields["MESSAGE"] == big and fields["PRIORITY"] == "4"


def test_journal_handler_falls_back_when_journald_gone(logger, tmp_path):
    buf = io.StringIO()
    handler = wlog.JournalHandler(str(tmp_path / "gone.sock"),
                                  fallback=wlog.StderrHandler(buf))
    logger.addHandler(handler)
    log_event(logger, MessageId.VOLUME_LOCKED, "Locked", operation="lock", result="ok")
    assert "info: Locked [MESSAGE_ID=cc0c9bfcf2fe4e6e97378b1b4806e1d7" in buf.getvalue()


def _catalog_ids(text: str) -> list[str]:
    return re.findall(r"^-- ([0-9a-f]{32})$", text, flags=re.M)


def test_catalog_has_one_entry_per_message_id():
    ids = _catalog_ids(CATALOG.read_text())
    assert sorted(ids) == sorted(m.value for m in MessageId)
    for block in CATALOG.read_text().split("\n-- ")[1:]:
        assert "\nSubject: " in block and "\nDefined-By: wkd" in block


def test_catalog_compiles_with_journalctl(tmp_path):
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        pytest.skip("journalctl not installed: cannot compile the catalog")
    catdir = tmp_path / "usr/lib/systemd/catalog"
    catdir.mkdir(parents=True)
    (tmp_path / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, catdir / "wkd.catalog")
    subprocess.run([journalctl, f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run([journalctl, f"--root={tmp_path}", "--list-catalog"],
                            check=True, capture_output=True, text=True).stdout
    for mid in MessageId:
        assert mid.value in listed, mid.name
