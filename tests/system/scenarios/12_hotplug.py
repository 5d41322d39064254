"""Hot-plug: an auto-unlock volume attached through QMP is unlocked; unplug removes it."""
# wkd-test: boot=1 timeout=240 disks=hot
import os

from wkdtest import (
    Scenario,
    disk,
    dm_exists,
    dm_holders,
    journal_entries,
    luks_uuid,
    unit_log,
)

BOUND = 15.0  # seconds; udev delivers the event in ~0.2 s, the rest is unwrap + dm under TCG

with Scenario() as t:
    dev = disk("hot")
    t.busctl("Format", "ssa{sv}", dev, "", "1", "auto-unlock", "b", "true")
    uuid = luks_uuid(dev)
    # Whatever the daemon does on Format, start from a locked volume.
    t.busctl("Lock", "sa{sv}", dev, "0", check=False)

    reply = t.host("unplug", disk="hot")
    t.require("host unplugs the disk (QMP device_del)", reply["ok"], str(reply))
    t.check("by-id link disappears after unplug",
            t.wait_for("by-id link gone", lambda: not os.path.exists(dev), 20) is not None)

    reply = t.host("plug", disk="hot")
    t.require("host plugs the disk back (QMP device_add)", reply["ok"], str(reply))
    took = t.wait_for("auto-unlock mapping", lambda: bool(dm_holders(dev)), BOUND)
    names = dm_holders(dev)
    t.check(f"auto-unlock mapping appears within {BOUND:.0f}s of plug",
            took is not None, f"took {took}s, mappings {names}")
    obj = "/org/wkd1/volume/" + uuid.replace("-", "_")
    if names:
        # The mapping shows in sysfs while the daemon's activation call is still returning;
        # the object follows once it has: wait for it rather than race it.
        active = t.wait_for("Volume object Active", lambda: t.get_property(
            obj, "org.wkd1.Volume", "Active") is True, BOUND)
        t.check("Volume object reports Active with that mapping", active is not None
                and t.get_property(obj, "org.wkd1.Volume", "MappedName") == names[0])

    reply = t.host("unplug", disk="hot")
    t.require("host unplugs the disk again", reply["ok"], str(reply))
    gone = t.wait_for("mapping removal", lambda: not any(dm_exists(n) for n in names), BOUND)
    t.check(f"mapping removed within {BOUND:.0f}s of unplug", gone is not None and bool(names),
            f"mappings {names}; wkd log:\n{unit_log()}")

    ops = {e.get("WKD_OPERATION") for e in journal_entries(WKD_VOLUME_UUID=uuid)}
    t.check("journal records the hot-plug unlock and the cleanup with structured fields",
            len(ops) >= 2, str(sorted(o for o in ops if o)))
    reply = t.host("plug", disk="hot")  # leave the disk attached for later scenarios
