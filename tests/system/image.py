"""Build or reuse the cached guest image (tests/system/cache/image-<key>/).

The key hashes everything that goes into the image (builder script, package list, runner
unit), so an edit to any of them rebuilds and nothing else does.  wkd itself is not in the
image: each run installs the freshly built .deb at first boot.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
INPUTS = ("build-image.sh", "guest/packages.txt", "guest/wkd-test-runner.service")


@dataclass(frozen=True)
class Image:
    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    built_seconds: float | None  # None: reused from the cache


def image_key() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_image(log: Callable[[str], None] = print) -> Image:
    directory = CACHE / f"image-{image_key()}"
    files = [directory / n for n in ("rootfs.img", "vmlinuz", "initrd.img")]
    built: float | None = None
    if not all(f.exists() for f in files):
        for old in CACHE.glob("image-*"):
            if old != directory:
                shutil.rmtree(old, ignore_errors=True)  # one image is enough (2 GB sparse)
        log(f"building guest image {directory.name} (mmdebstrap, ~1 min) ...")
        started = time.monotonic()
        proc = subprocess.run([str(HERE / "build-image.sh"), str(directory)],
                              capture_output=True, text=True, check=False)
        built = time.monotonic() - started
        if proc.returncode != 0 or not all(f.exists() for f in files):
            (CACHE / "image-build.log").write_text(proc.stdout + proc.stderr)
            raise RuntimeError("guest image build failed; log in "
                               f"{CACHE / 'image-build.log'}:\n{proc.stderr[-3000:]}")
        log(f"guest image built in {built:.0f}s")
    else:
        log(f"guest image {directory.name} reused from cache")
    return Image(directory, files[0], files[1], files[2], built)
