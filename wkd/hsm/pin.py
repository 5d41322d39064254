"""Reading the token PIN: from a systemd credential, else from a root-only file.

The PIN never appears in a log line or an exception message; errors name the path only.
"""

from __future__ import annotations

import os
import stat

from wkd.errors import HsmLoginFailed

# systemd exports the directory of LoadCredential=/SetCredential= files to the service as
# $CREDENTIALS_DIRECTORY (systemd.exec(5), "Credentials"); it is readable by the service only.
_CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
_MAX_PIN_BYTES = 4096


def read_pin(pin_file: str | None, credential: str | None = "wkd-pin") -> str:
    """The PIN, from $CREDENTIALS_DIRECTORY/<credential> if present, else from `pin_file`.

    A PIN file must be owned by root or the current user and not be readable by group or
    others; otherwise it is refused (the PIN may already have leaked, and silently using it
    would hide that). One trailing newline is stripped (`echo PIN > file`).
    """
    if credential:
        cred_dir = os.environ.get(_CREDENTIALS_ENV)
        if cred_dir:
            path = os.path.join(cred_dir, credential)
            if os.path.exists(path):
                # systemd already made this private to the unit; no mode check is needed.
                return _read(path)
    if not pin_file:
        raise HsmLoginFailed(
            "no PIN: neither a systemd credential "
            f"{credential!r} nor a PIN file is configured"
        )
    _check_private(pin_file)
    return _read(pin_file)


def _check_private(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise HsmLoginFailed(f"cannot read PIN file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise HsmLoginFailed(f"PIN file {path} is not a regular file")
    if st.st_uid not in (0, os.getuid()):
        raise HsmLoginFailed(f"PIN file {path} is owned by uid {st.st_uid}, not root")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HsmLoginFailed(
            f"PIN file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 0600 it"
        )


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_PIN_BYTES + 1)
    except OSError as e:
        raise HsmLoginFailed(f"cannot read PIN file {path}: {e.strerror}") from None
    if len(raw) > _MAX_PIN_BYTES:
        raise HsmLoginFailed(f"PIN file {path} is too large")
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        pin = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HsmLoginFailed(f"PIN file {path} is not UTF-8") from None
    if not pin:
        raise HsmLoginFailed(f"PIN file {path} is empty")
    return pin
