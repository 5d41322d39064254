"""Logging for the daemon: structured journal entries, or readable stderr lines without journald.

Every key operation is logged with `log_event`, which attaches the journal fields MESSAGE_ID,
WKD_VOLUME_UUID, WKD_OPERATION, WKD_RESULT, WKD_CALLER_UID and WKD_CALLER_PID (plus any extra
WKD_* field). Each MESSAGE_ID has an entry in units/wkd.catalog, so `journalctl -x` explains it
and `journalctl MESSAGE_ID=...` finds every occurrence.

Journal entries are written with the native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL)
straight to /run/systemd/journal/socket. Doing it ourselves instead of through
systemd.journal.send needs no C extension and, more importantly, reports failure: with
journald absent a write through libsystemd vanishes silently (docs environment notes), while a
send that fails here falls back to stderr for that record.

Nothing secret may reach a log line (DESIGN.md, threat model promise 2). `RedactFilter` is the
last line of defence: any field value or %-argument that is raw bytes, a SecretKey or a
WrappedKey is replaced by "<redacted>" before any handler formats it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
import sys
import time
from collections.abc import Mapping
from typing import Final, TextIO

from wkd.model import WrappedKey
from wkd.secret import SecretKey

JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER: Final = "wkd"
REDACTED: Final = "<redacted>"
# The LogRecord attribute that carries structured fields (set through `extra=`).
FIELDS_ATTR: Final = "wkd_fields"

# journald refuses field names that are not [A-Z0-9_], start with "_" (trusted fields) or
# exceed 64 characters (systemd.journal-fields(7), JOURNAL_NATIVE_PROTOCOL).
_MAX_FIELD_NAME: Final = 64
_SEND_TIMEOUT: Final = 1.0  # seconds; a wedged journald must not stall the event loop

LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class MessageId(enum.StrEnum):
    """Fixed 128-bit journal message ids (sd-id128 style, generated once, never change).

    Each has a catalog entry in units/wkd.catalog, whose text uses these fields besides the
    standard ones, so pass them to `log_event` where they apply: device= (WKD_DEVICE),
    kek= (WKD_KEK, a label), mapping= (WKD_MAPPING), error= (WKD_ERROR, the WkdError
    message), hsm= (WKD_HSM, token label and "software" when SoftHSM2).
    """

    VOLUME_FORMATTED = "0db9265f05494982bd38745a69f2a5dd"
    VOLUME_UNLOCKED = "c3a325d30c854b25b8985cd77a9c9db3"
    VOLUME_LOCKED = "cc0c9bfcf2fe4e6e97378b1b4806e1d7"
    VOLUME_REWRAPPED = "82dc75869c1d4ede9f757e73781013f3"
    KEK_CREATED = "4b33e23ff99c4e62b04a44a6d90a56fc"
    OPERATION_FAILED = "7945ffa3c09d4d38b24560246654f4b5"
    DAEMON_STARTED = "2564ba76cc724086b22346673eca8bac"
    RECONCILED = "d107343e75b0480ebfcb1ce441a61828"
    VOLUME_DUPLICATE = "b3c85dcd711848828874cdf2176ede1f"
    VOLUME_MOVED = "d16ac26c8b324f3d8e6b5531ca86ff56"
    FORMAT_RECOVERED = "82da49a960f644e1b8f075978110f7e3"


# --- redaction -------------------------------------------------------------------------

def _is_secretish(value: object) -> bool:
    # bytes are refused wholesale: a log line has no business carrying raw binary, and a
    # wrapped blob or an unwrapped key is exactly such a value.
    return isinstance(value, bytes | bytearray | memoryview | SecretKey | WrappedKey)


class RedactFilter(logging.Filter):
    """Replace secret-looking values in structured fields and %-arguments by "<redacted>"."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            for key, value in list(fields.items()):
                if _is_secretish(value):
                    fields[key] = REDACTED
        if _is_secretish(record.msg):
            record.msg = REDACTED
        if isinstance(record.args, tuple):
            record.args = tuple(REDACTED if _is_secretish(a) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: REDACTED if _is_secretish(v) else v
                           for k, v in record.args.items()}
        return True


# --- the event API ---------------------------------------------------------------------

def _field_name(key: str) -> str:
    name = key.upper()
    if not name.startswith("WKD_"):
        name = "WKD_" + name
    if (len(name) > _MAX_FIELD_NAME or
            not all(c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in name)):
        raise ValueError(f"invalid journal field name {key!r}")
    return name


def log_event(logger: logging.Logger, message_id: MessageId, message: str, *,
              volume_uuid: str | None = None, operation: str, result: str,
              caller_uid: int | None = None, caller_pid: int | None = None,
              level: int = logging.INFO, **fields: str | int) -> None:
    """Log one key operation as a structured entry.

    `fields` become extra journal fields: `device="/dev/sdb"` is sent as WKD_DEVICE. Values
    are str or int; anything else secret-looking is redacted by the handlers' filter.
    """
    structured: dict[str, object] = {
        "MESSAGE_ID": message_id.value,
        "WKD_OPERATION": operation,
        "WKD_RESULT": result,
    }
    if volume_uuid is not None:
        structured["WKD_VOLUME_UUID"] = volume_uuid
    if caller_uid is not None:
        structured["WKD_CALLER_UID"] = caller_uid
    if caller_pid is not None:
        structured["WKD_CALLER_PID"] = caller_pid
    for key, value in fields.items():
        structured[_field_name(key)] = value
    # stacklevel=2: CODE_FILE/CODE_LINE name the engine call site, not this helper.
    logger.log(level, "%s", message, extra={FIELDS_ATTR: structured}, stacklevel=2)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields attached to a record (empty for plain logger calls)."""
    fields = getattr(record, FIELDS_ATTR, None)
    return dict(fields) if isinstance(fields, dict) else {}


# --- journal handler -------------------------------------------------------------------

def _syslog_priority(levelno: int) -> int:
    # syslog(3) priorities: 2 crit, 3 err, 4 warning, 6 info, 7 debug.
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _value_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def encode_journal_fields(fields: Mapping[str, object]) -> bytes:
    """Serialize fields in the journal native protocol.

    A value without newline is sent as `NAME=value\\n`; one with a newline as `NAME\\n`, a
    64-bit little-endian length, the raw value and `\\n` (JOURNAL_NATIVE_PROTOCOL, "Field
    serialization").
    """
    out = bytearray()
    for name, value in fields.items():
        data = _value_text(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Send each record to journald as a structured entry; stderr if the send fails."""

    def __init__(self, socket_path: str = JOURNAL_SOCKET, *,
                 fallback: logging.Handler | None = None) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.fallback = fallback or StderrHandler()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(_SEND_TIMEOUT)

    def fields_for(self, record: logging.LogRecord) -> dict[str, object]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        fields: dict[str, object] = {
            "MESSAGE": message,
            "PRIORITY": _syslog_priority(record.levelno),
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
        }
        fields.update(record_fields(record))
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            payload = encode_journal_fields(self.fields_for(record))
            self._send(payload)
        except OSError:
            # journald gone, socket full or wedged: the record must not vanish.
            self.fallback.handle(record)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)

    def _send(self, payload: bytes) -> None:
        try:
            self._sock.sendto(payload, self.socket_path)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> None:
        # Too big for one datagram: pass a sealed memfd holding the entry (the protocol's
        # large-message path; journald refuses an unsealed memfd).
        fd = os.memfd_create("wkd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, payload)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW |
                        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._sock.connect(self.socket_path)
            try:
                socket.send_fds(self._sock, [b""], [fd])
            finally:
                # Reconnecting to AF_UNSPEC is not possible for AF_UNIX; use a fresh socket.
                self._sock.close()
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(_SEND_TIMEOUT)
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        super().close()


# --- stderr handler --------------------------------------------------------------------

def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "\\=\n\t'):
        return value
    return json.dumps(value, ensure_ascii=False)


class StderrFormatter(logging.Formatter):
    """One readable line per record, structured fields appended as KEY=value.

    2026-11-28T09:10:00Z wkd[812] info: Volume unlocked [MESSAGE_ID=c3a3... WKD_RESULT=ok]
    """

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        message = record.getMessage().replace("\n", "\\n")
        line = (f"{when} {SYSLOG_IDENTIFIER}[{record.process}] "
                f"{record.levelname.lower()}: {message}")
        fields = record_fields(record)
        if fields:
            line += " [" + " ".join(f"{k}={_quote(_value_text(v))}"
                                    for k, v in fields.items()) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class StderrHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO | None = None) -> None:
        # Resolve sys.stderr at emit time when no stream is given, so pytest's capture and
        # a re-opened stderr are honoured.
        super().__init__(stream)
        self._explicit = stream is not None
        self.setFormatter(StderrFormatter())
        self.addFilter(RedactFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if not self._explicit:
            self.stream = sys.stderr
        super().emit(record)


# --- setup -----------------------------------------------------------------------------

def journal_available(socket_path: str = JOURNAL_SOCKET) -> bool:
    """True when journald's native socket exists (a socket file, not just any path)."""
    try:
        return stat.S_ISSOCK(os.stat(socket_path).st_mode)
    except OSError:
        return False


def setup_logging(level: str = "info", *, force_stderr: bool = False,
                  journal_socket: str = JOURNAL_SOCKET) -> logging.Handler:
    """Configure the root logger for the daemon and return the handler installed.

    Journal when `journal_socket` exists and `force_stderr` is false, stderr otherwise.
    Calling it again replaces the handler it installed before (idempotent).
    """
    try:
        numeric = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; "
                         f"expected one of {', '.join(LEVELS)}") from None
    handler: logging.Handler
    if not force_stderr and journal_available(journal_socket):
        handler = JournalHandler(journal_socket)
    else:
        handler = StderrHandler()
    handler.addFilter(RedactFilter())
    setattr(handler, "_wkd_installed", True)  # noqa: B010 - marker for idempotent setup
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_wkd_installed", False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
