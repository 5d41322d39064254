"""Shared set-up for engine tests: a real embedded SoftHSM2 token, image files, leak search.

SoftHSM2 reads SOFTHSM2_CONF once per C_Initialize, and python-pkcs11 keeps one module per
path, so every engine in one test process uses one state directory (session-wide) and tests
tell their volumes apart by image file, not by token.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wkd.config import Config, load_config
from wkd.disk import luks2
from wkd.disk.port import LocalDisk
from wkd.engine import Engine
from wkd.model import WrappedKey
from wkd.system.daemon import make_engine
from wkd.token import TOKEN_TYPE, parse_token

IMAGE_BYTES = 40 * 1024 * 1024
# Every clear key and wrapped blob a test learns; tests/conftest.py searches all logs for them.
SEEN_SECRETS: list[bytes] = []


def need_tools() -> str | None:
    for tool in ("softhsm2-util", "cryptsetup", "blkid"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/usr/lib/softhsm/libsofthsm2.so"):
        return "SoftHSM2 module /usr/lib/softhsm/libsofthsm2.so is missing"
    return None


def config_for(state_dir: Path, *, allow_files: bool = True) -> Config:
    return load_config(None, overrides={
        "daemon.state_dir": str(state_dir),
        "daemon.allow_image_files": allow_files,
    })


def make_image(path: Path, size: int = IMAGE_BYTES) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def wkd_tokens(path: str | Path) -> dict[int, dict[str, object]]:
    with luks2.Luks2Device.open(str(path)) as dev:
        return {tid: json.loads(dev.token_json_get(tid))
                for tid, ty in dev.token_list().items() if ty == TOKEN_TYPE}


def only_wrapped(path: str | Path) -> WrappedKey:
    with luks2.Luks2Device.open(str(path)) as dev:
        toks = [parse_token(dev.token_json_get(t)) for t, ty in dev.token_list().items()
                if ty == TOKEN_TYPE]
    assert len(toks) == 1, f"expected exactly one wkd token, found {len(toks)}"
    SEEN_SECRETS.append(toks[0].wrapped_key)
    return toks[0].wrapped()


def header_bytes(path: str | Path, length: int = 16 * 1024 * 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(length)


async def clear_key(engine: Engine, path: str | Path) -> bytes:
    """The volume key, through the test-only path (never done by wkd itself)."""
    key = await engine._ctx.hsm.unwrap(only_wrapped(path))
    with key:
        clear = key.reveal_for_test()
    SEEN_SECRETS.append(clear)
    return clear


def forms(secret: bytes) -> list[bytes]:
    """The shapes a leaked key could take in text: raw, hex (both cases), base64 variants."""
    out = [secret, secret.hex().encode(), secret.hex().upper().encode(),
           base64.b64encode(secret), base64.urlsafe_b64encode(secret),
           base64.b64encode(secret).rstrip(b"=")]
    # A prefix of the key long enough to be unmistakable also counts (partial dumps).
    out.append(secret.hex()[:32].encode())
    return out


@dataclass
class LeakWatch:
    """Collects every log record (all loggers, DEBUG) and the secrets a test learned."""

    records: list[str] = field(default_factory=list)
    secrets: list[bytes] = field(default_factory=list)

    def text(self) -> bytes:
        return "\n".join(self.records).encode(errors="surrogateescape")

    def assert_clean(self) -> None:
        blob = self.text()
        for secret in self.secrets:
            for form in forms(secret):
                assert form not in blob, "a secret appeared in the log output"


class _Collect(logging.Handler):
    def __init__(self, watch: LeakWatch) -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record)
        extra = {k: v for k, v in record.__dict__.items() if k.isupper() or k.startswith("wkd")}
        self.watch.records.append(f"{msg} {extra!r}")


def watch_logs() -> Iterator[LeakWatch]:
    watch = LeakWatch()
    handler = _Collect(watch)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield watch
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    watch.assert_clean()


def new_engine(state_dir: Path, *, allow_files: bool = True,
               devices: list[str] | None = None) -> Engine:
    """An engine on the session's embedded token whose start-up scan looks only at
    `devices` (none by default): tests must never pick up another test's (or another
    checkout's) loop devices."""
    scoped = LocalDisk(str(state_dir), allow_files=allow_files,
                       candidates=lambda: list(devices or []))
    return make_engine(config_for(state_dir, allow_files=allow_files), scoped)


def luks_dump(path: str | Path) -> str:
    return subprocess.run(["cryptsetup", "luksDump", str(path)], check=True,
                          capture_output=True, text=True).stdout
