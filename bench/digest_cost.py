"""Why wkd keeps the LUKS2 digest's PBKDF at the minimum: the cost of one volume-key check.

    .venv/bin/python -m bench.digest_cost      (root; two 40 MiB sparse images in a tmp dir)

Checks the same random 512-bit key 20 times against a header formatted by wkd (pbkdf2-sha256,
1000 iterations) and one formatted by `cryptsetup luksFormat` with its benchmarked default
digest, and prints both medians. The key is random and never written anywhere but the images.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time

from wkd.disk import luks2
from wkd.secret import SecretKey


def main() -> None:
    d = tempfile.mkdtemp(prefix="wkd-digest-")
    try:
        key = SecretKey.from_bytes(bytearray(os.urandom(64)))
        ours, default = os.path.join(d, "wkd.img"), os.path.join(d, "default.img")
        for p in (ours, default):
            with open(p, "wb") as f:
                f.truncate(40 << 20)
        luks2.Luks2Device.format(ours, key).close()
        vk_file = os.path.join(d, "vk")
        fd = os.open(vk_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, key.reveal_for_test())
        os.close(fd)
        subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "-q",
                        "--volume-key-file", vk_file, "--key-file", vk_file, default],
                       check=True)
        for name, path in (("wkd digest (pbkdf2, 1000 iterations)", ours),
                           ("cryptsetup default digest (benchmarked)", default)):
            with luks2.Luks2Device.open(path) as dev:
                times = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    if not dev.verify_volume_key(key):
                        raise SystemExit(f"{name}: the key did not verify")
                    times.append(time.perf_counter() - t0)
            print(f"{name}: median {statistics.median(times) * 1000:.2f} ms over 20 checks")
        key.wipe()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
