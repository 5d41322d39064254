"""Boot, part 1: a volume listed in /etc/wkdtab with an fstab entry (checked after reboot)."""
# wkd-test: boot=1 timeout=240 disks=boot
import json
import os
from pathlib import Path

from wkdtest import Scenario, disk, luks_uuid, sha256_of

MAP, MNT = "wkdboot", "/mnt/wkdboot"
STATE = Path("/var/lib/wkdtest/boot.json")  # on the root overlay, which the reboot keeps

with Scenario() as t:
    dev = disk("boot")
    t.busctl("Format", "ssa{sv}", dev, "", "0")
    uuid = luks_uuid(dev)
    t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", MAP)
    t.run("mkfs.ext4", "-q", f"/dev/mapper/{MAP}")
    os.makedirs(MNT, exist_ok=True)
    t.run("mount", f"/dev/mapper/{MAP}", MNT)
    with open(f"{MNT}/hello.bin", "wb") as f:
        f.write(os.urandom(65536))
    want = sha256_of(f"{MNT}/hello.bin")
    t.run("umount", MNT)
    t.busctl("Lock", "sa{sv}", dev, "0")

    with open("/etc/wkdtab", "a") as f:
        f.write(f"# written by the system-test tier\n{MAP}  UUID={uuid}  discard\n")
    with open("/etc/fstab", "a") as f:
        f.write(f"/dev/mapper/{MAP}  {MNT}  ext4  defaults  0  2\n")
    t.run("systemctl", "daemon-reload")
    generated = [str(p) for d in ("/run/systemd/generator", "/run/systemd/generator.early",
                                  "/run/systemd/generator.late")
                 for p in Path(d).rglob(f"*{MAP}*")]
    t.check("the wkd generator wrote a unit for the wkdtab entry", bool(generated),
            " ".join(generated))
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps({"uuid": uuid, "sha256": want, "map": MAP, "mnt": MNT}))
    t.check("expectations saved for the next boot", STATE.exists())
