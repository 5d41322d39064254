"""The embedded default HSM: a SoftHSM2 token in the daemon's state directory.

With no configuration wkd keeps its KEKs in a SoftHSM2 token under `<state_dir>/tokens`,
initialized on first start with random PINs that only root can read. It is a *software*
token: the KEK is protected by file permissions, not hardware, and every status output
says so (HsmInfo.software / .embedded).

Process-wide configuration. SoftHSM2 reads $SOFTHSM2_CONF once, inside C_Initialize
(softhsm2.conf(5)); python-pkcs11 runs C_Initialize when the module is first loaded and keeps
it loaded per path. So `ensure_embedded_token` must run before the first backend opens, and
every SoftHSM2 backend of one process sees the same configuration (the Pkcs11Backend
finalizes the module when its last user closes, after which a new configuration applies).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import subprocess
import sys
from dataclasses import dataclass
from typing import Final

from wkd.errors import HsmUnavailable
from wkd.hsm.pin import read_pin

SOFTHSM_MODULE: Final = "/usr/lib/softhsm/libsofthsm2.so"
EMBEDDED_TOKEN_LABEL: Final = "wkd-embedded"  # noqa: S105 - a label, not a secret
DEFAULT_KEK_LABEL: Final = "wkd-default"
_PIN_ALPHABET: Final = string.ascii_letters + string.digits
_PIN_CHARS: Final = 32
_INIT_TIMEOUT_S: Final = 60


@dataclass(frozen=True, slots=True)
class EmbeddedToken:
    module: str
    token_label: str
    pin_file: str
    conf_file: str

    def read_pin(self) -> str:
        return read_pin(self.pin_file, credential=None)


def ensure_embedded_token(state_dir: str, module: str = SOFTHSM_MODULE) -> EmbeddedToken:
    """Create (first call) or reuse the embedded token; set SOFTHSM2_CONF for this process."""
    if not os.path.exists(module):
        raise HsmUnavailable(f"SoftHSM2 module {module} is not installed (apt install softhsm2)")
    state_dir = os.path.abspath(state_dir)
    tokens = os.path.join(state_dir, "tokens")
    for d in (state_dir, tokens):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)  # makedirs leaves an existing directory's mode alone
    conf = os.path.join(state_dir, "softhsm2.conf")
    _write_if_changed(conf, _conf_text(tokens))
    # Before any C_Initialize of this process: that is when SoftHSM2 reads it.
    os.environ["SOFTHSM2_CONF"] = conf

    pin_file = os.path.join(state_dir, "pin")
    so_pin_file = os.path.join(state_dir, "so-pin")
    # PINs reach the disk (0600, O_EXCL) BEFORE the token exists: a crash in between leaves
    # PIN files and no token, and the next start initializes the token with those PINs. The
    # reverse order could leave a token nobody can log in to.
    pin = _read_or_create_pin(pin_file)
    so_pin = _read_or_create_pin(so_pin_file)
    # The initializer is a child process (a second interpreter start: ~50 ms here, ~1 s in
    # an emulated VM at boot), so it runs only until it has once succeeded; the marker is
    # written after that, and a crash before it just means one more idempotent run.
    ready = os.path.join(state_dir, ".token-initialized")
    if not (os.path.exists(ready) and any(os.scandir(tokens))):
        _init_token(module, conf, EMBEDDED_TOKEN_LABEL, so_pin, pin)
        fd = os.open(ready, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)
    return EmbeddedToken(module=module, token_label=EMBEDDED_TOKEN_LABEL, pin_file=pin_file,
                         conf_file=conf)


def _conf_text(tokendir: str) -> str:
    return (
        "# Written by wkd for its embedded SoftHSM2 token; see softhsm2.conf(5).\n"
        f"directories.tokendir = {tokendir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )


def _write_if_changed(path: str, text: str) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        if f.read() == text:
            return
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_or_create_pin(path: str) -> str:
    if os.path.exists(path):
        return read_pin(path, credential=None)  # refuses a file others can read
    pin = "".join(secrets.choice(_PIN_ALPHABET) for _ in range(_PIN_CHARS))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(pin + "\n")
        f.flush()
        os.fsync(f.fileno())
    return pin


# Token initialization runs in a child interpreter that calls the module through ctypes:
# python-pkcs11 has no C_InitToken, softhsm2-util only takes PINs as arguments (visible in
# `ps` and /proc/<pid>/cmdline), and a child has its own C_Initialize, so it works even when
# this process already has the module loaded. PINs travel on the child's stdin.
# PKCS#11 v2.40 base §5.6: C_InitToken (SO PIN, label), then an SO session: C_InitPIN.
_INIT_SCRIPT: Final = r"""
import ctypes as C, sys
mod, label = sys.argv[1], sys.argv[2].encode()
so_pin, pin = sys.stdin.read().split("\n")[:2]
so_pin, pin = so_pin.encode(), pin.encode()
L = C.CDLL(mod)
U = C.c_ulong
class Info(C.Structure):
    _fields_ = [("label", C.c_char * 32), ("man", C.c_char * 32), ("model", C.c_char * 16),
                ("serial", C.c_char * 16), ("flags", U), ("n", U * 10), ("ver", C.c_ubyte * 4),
                ("utc", C.c_char * 16)]
def ok(rv, what):
    if rv:
        sys.stderr.write("%s failed: CKR 0x%x\n" % (what, rv)); sys.exit(2)
def slots():
    n = U(0); ok(L.C_GetSlotList(1, None, C.byref(n)), "C_GetSlotList")
    ids = (U * n.value)(); ok(L.C_GetSlotList(1, ids, C.byref(n)), "C_GetSlotList")
    out = []
    for s in ids[: n.value]:
        i = Info(); ok(L.C_GetTokenInfo(U(s), C.byref(i)), "C_GetTokenInfo")
        out.append((s, i))
    return out
TOKEN_INITIALIZED = 0x400
ok(L.C_Initialize(None), "C_Initialize")
padded = label.ljust(32, b" ")
def find():
    return [s for s, i in slots()
            if i.flags & TOKEN_INITIALIZED and bytes(i.label).ljust(32, b" ") == padded]
if find():
    L.C_Finalize(None); print("exists"); sys.exit(0)
free = [s for s, i in slots() if not i.flags & TOKEN_INITIALIZED]
if not free:
    sys.stderr.write("no free slot\n"); sys.exit(2)
ok(L.C_InitToken(U(free[0]), so_pin, U(len(so_pin)), padded), "C_InitToken")
slot = find()[0]  # SoftHSM2 renumbers the slot after initialization
h = U(0)
ok(L.C_OpenSession(U(slot), U(0x6), None, None, C.byref(h)), "C_OpenSession")
ok(L.C_Login(h, U(0), so_pin, U(len(so_pin))), "C_Login(SO)")
ok(L.C_InitPIN(h, pin, U(len(pin))), "C_InitPIN")
L.C_Logout(h); L.C_CloseSession(h); L.C_Finalize(None)
print("created")
"""


def _init_token(module: str, conf: str, label: str, so_pin: str, pin: str) -> None:
    env = {"SOFTHSM2_CONF": conf, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _INIT_SCRIPT, module, label],
            input=f"{so_pin}\n{pin}\n", capture_output=True, text=True, env=env,
            timeout=_INIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HsmUnavailable(f"cannot initialize the embedded SoftHSM2 token: {e}") from None
    if proc.returncode != 0 or proc.stdout.strip() not in ("exists", "created"):
        # The child's stderr holds only function names and CKR codes, never PINs.
        raise HsmUnavailable(
            "cannot initialize the embedded SoftHSM2 token: "
            f"{proc.stderr.strip() or f'exit status {proc.returncode}'}"
        )
