"""Harness self-check: the guest kernel does dm-crypt on a virtio disk; the system is up."""
# wkd-test: boot=1 timeout=120 disks=smoke
import os

from wkdtest import Scenario, disk

with Scenario() as t:
    dev = disk("smoke")
    t.require(f"{dev} exists (serial-named virtio disk)", os.path.exists(dev))
    t.run("modprobe", "dm_crypt")
    t.check("device-mapper control node exists", os.path.exists("/dev/mapper/control"))
    pbkdf = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    t.run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *pbkdf,
          "--key-file", "-", dev, input=b"smoke-passphrase")
    t.run("cryptsetup", "open", "--key-file", "-", dev, "smoke", input=b"smoke-passphrase")
    t.check("LUKS2 mapping is active", os.path.exists("/dev/mapper/smoke"))
    t.run("mkfs.ext4", "-q", "/dev/mapper/smoke")
    t.run("cryptsetup", "close", "smoke")
    t.check("mapping removed on close", not os.path.exists("/dev/mapper/smoke"))
    state = t.run("systemctl", "is-system-running", "--wait", check=False,
                  timeout=90).stdout.strip()
    failed = t.run("systemctl", "--failed", "--plain", "--no-legend").stdout.strip()
    t.check("systemctl is-system-running reports running", state == "running",
            f"state={state} failed units: {failed}")
