"""Format with a full state directory: a typed error before the disk is touched (issue 9.8)."""
# wkd-test: boot=1 timeout=240 disks=full
import json
import os
import subprocess

from wkdtest import Scenario, disk, luks_uuid, sha256_of, unit_log

STATE = "/var/lib/wkd"
BACKUP = "/root/wkd-state-backup"
REGION = 17 * 1024 * 1024
# The error *name* (busctl prints only the message): a tiny dbus-fast client with the
# package's vendored copy, as in 11_authz.
PROBE = r"""
import asyncio, json, sys
sys.path.insert(0, "/usr/lib/wkd/vendor")
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    reply = await bus.call(Message(destination="org.wkd1", path="/org/wkd1",
        interface="org.wkd1.Manager", member="Format", signature="ssa{sv}",
        body=[sys.argv[1], "", {"force": Variant("b", True)}]))
    print(json.dumps([reply.message_type == MessageType.ERROR, reply.error_name,
                      reply.body[0] if reply.body else ""]))
asyncio.run(main())
"""


def fill(directory: str) -> None:
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)


with Scenario() as t:
    dev = disk("full")
    t.run("dd", "if=/dev/urandom", f"of={dev}", "bs=1M", "count=17", "oflag=direct")
    before = sha256_of(dev, REGION)
    # The daemon's state directory on a small tmpfs holding a copy of what it has now.
    t.run("systemctl", "stop", "wkd.service")
    t.run("rm", "-rf", BACKUP)
    t.run("cp", "-a", STATE, BACKUP)
    used_kib = int(t.run("du", "-sk", STATE).stdout.split()[0])
    t.run("mount", "-t", "tmpfs", "-o", f"size={used_kib + 1024}k,mode=0700", "tmpfs", STATE)
    try:
        t.run("cp", "-a", f"{BACKUP}/.", STATE)
        t.require("the daemon starts on the small state directory",
                  t.get_property("/org/wkd1", "org.wkd1.Manager", "HsmState") == "ready")
        fill(STATE)
        df = t.run("df", "--output=avail", "-B1", STATE).stdout.split()[-1]
        t.check("the state directory is full", int(df) < 65536, f"{df} bytes free")

        proc = t.run("python3", "-c", PROBE, dev, check=False)
        failed, name, message = json.loads(proc.stdout or "[false, \"\", \"\"]")
        t.check("Format fails with org.wkd1.Error.StateUnwritable",
                failed and name == "org.wkd1.Error.StateUnwritable", f"{name}: {message}")
        t.check("the error says which file and why", "state directory" in message
                and "No space left" in message, message)
        t.check("not one byte of the device changed", sha256_of(dev, REGION) == before)
        blkid = subprocess.run(["blkid", "-p", dev], capture_output=True, text=True)
        t.check("no LUKS header appeared", "crypto_LUKS" not in blkid.stdout, blkid.stdout)
        log = unit_log(lines=200)
        t.check("no traceback in the daemon's journal", "Traceback" not in log, log[-1500:])

        os.unlink(os.path.join(STATE, "filler"))
        t.busctl("Format", "ssa{sv}", dev, "", "1", "force", "b", "true")
        uuid = luks_uuid(dev)
        volumes = t.busctl_json("ListVolumes", "a{sv}", "0")[0]
        t.check("with room again, Format works and the volume is listed",
                any(uuid.replace("-", "_") in v for v in volumes), str(volumes))
    finally:
        t.run("systemctl", "stop", "wkd.service", check=False)
        t.run("umount", STATE, check=False)
        t.run("rm", "-rf", BACKUP, check=False)
