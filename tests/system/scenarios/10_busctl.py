"""busctl on the system bus: CreateKek, Format, Unlock, data, Lock, Rewrap, keyring table."""
# wkd-test: boot=1 timeout=300 disks=bus
import json
import os
import re
import subprocess

from wkdtest import (
    KEYRING_REF,
    Scenario,
    disk,
    dm_exists,
    dm_table_with_keys,
    journal_entries,
    luks_uuid,
    object_path_uuid,
    sha256_of,
)

MNT = "/mnt/wkdbus"
MAP = "wkdbus"

with Scenario() as t:
    dev = disk("bus")
    state = t.get_property("/org/wkd1", "org.wkd1.Manager", "HsmState")
    t.require("daemon is bus-activated and its HSM is ready", state == "ready", f"{state}")
    kek_a = t.busctl_json("CreateKek", "sa{sv}", "sys-kek-a", "0")[0]
    kek_b = t.busctl_json("CreateKek", "sa{sv}", "sys-kek-b", "0")[0]
    t.check("CreateKek returns two distinct KEK ids", bool(kek_a) and kek_a != kek_b,
            f"{kek_a} {kek_b}")
    keks = t.busctl_json("ListKeks", "a{sv}", "0")[0]
    t.check("ListKeks shows both", {"sys-kek-a", "sys-kek-b"} <= {k[0] for k in keks}, str(keks))

    path = t.busctl_json("Format", "ssa{sv}", dev, "sys-kek-a", "0")[0]
    uuid = luks_uuid(dev)
    t.check("Format returns the volume object of the LUKS UUID",
            object_path_uuid(path) == uuid, f"{path} vs {uuid}")

    t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", MAP)
    t.require("Unlock creates /dev/mapper/wkdbus", os.path.exists(f"/dev/mapper/{MAP}"))
    table = dm_table_with_keys(MAP)
    key_field = table.split()[4] if len(table.split()) > 4 else ""
    t.check("dm table references a kernel keyring logon key, not hex key material",
            bool(KEYRING_REF.fullmatch(key_field)) and key_field.startswith(":64:logon:")
            and not re.search(r"[0-9a-f]{64}", table), table)
    t.check("Volume object says Active", t.get_property(path, "org.wkd1.Volume", "Active")
            is True)

    t.run("mkfs.ext4", "-q", f"/dev/mapper/{MAP}")
    os.makedirs(MNT, exist_ok=True)
    t.run("mount", f"/dev/mapper/{MAP}", MNT)
    with open(f"{MNT}/data.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    want = sha256_of(f"{MNT}/data.bin")
    t.run("umount", MNT)

    t.busctl("Lock", "sa{sv}", dev, "0")
    t.check("Lock removes the mapping", not dm_exists(MAP))
    t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", MAP)
    t.run("mount", f"/dev/mapper/{MAP}", MNT)
    t.check("data reads back after Lock + Unlock", sha256_of(f"{MNT}/data.bin") == want)
    t.run("umount", MNT)

    t.busctl("Rewrap", "ssa{sv}", dev, "sys-kek-b", "0")
    t.check("Volume Kek property is the new KEK",
            t.get_property(path, "org.wkd1.Volume", "Kek") == "sys-kek-b")
    t.busctl("Lock", "sa{sv}", dev, "0")
    t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", MAP)
    t.run("mount", f"/dev/mapper/{MAP}", MNT)
    t.check("data still reads back after Rewrap + Lock + Unlock",
            sha256_of(f"{MNT}/data.bin") == want)
    t.run("umount", MNT)
    t.busctl("Lock", "sa{sv}", dev, "0")

    meta = json.loads(t.run("cryptsetup", "luksDump", "--dump-json-metadata", dev).stdout)
    tokens = [tok for tok in meta.get("tokens", {}).values() if tok.get("type") == "wkd"]
    t.check("luksDump shows exactly one wkd token, active, under the new KEK",
            len(tokens) == 1 and tokens[0].get("kek_label") == "sys-kek-b"
            and tokens[0].get("state") == "active", json.dumps(tokens))
    dump = t.run("cryptsetup", "luksDump", dev).stdout
    t.check("plain luksDump lists the wkd token", re.search(r"^\s*\d+: wkd$", dump, re.M)
            is not None, dump[-1200:])

    entries = journal_entries(WKD_VOLUME_UUID=uuid)
    ops = sorted({f"{e.get('WKD_OPERATION')}={e.get('WKD_RESULT')}" for e in entries})
    t.check("journal has structured entries (MESSAGE_ID, operation, result) for this volume",
            len(ops) >= 3 and all(e.get("MESSAGE_ID") for e in entries), " ".join(ops))

    # Two Unlocks of one volume at the same instant, from two clients: one mapping, and both
    # callers get the same volume back (the engine serialises per volume and is idempotent).
    argv = ["busctl", "--system", "--json=short", "call", "org.wkd1", "/org/wkd1",
            "org.wkd1.Manager", "Unlock", "sa{sv}", dev, "0"]
    racers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in racers]
    t.check("two concurrent Unlocks both succeed", all(p.returncode == 0 for p in racers),
            " | ".join(err for _out, err in outs))
    replies = {json.loads(out)["data"][0] for out, _err in outs if out.strip()}
    t.check("both return the same volume object", replies == {path}, str(replies))
    hex_uuid = uuid.replace("-", "")
    maps = [line.split()[0] for line in t.run("dmsetup", "info", "-c", "--noheadings",
                                               "-o", "name,uuid").stdout.splitlines()
            if hex_uuid in line]
    t.check("exactly one dm mapping exists for the volume", len(maps) == 1, str(maps))
    t.busctl("Lock", "sa{sv}", dev, "0")
    t.check("Lock after the race leaves no mapping", not any(
        hex_uuid in line for line in t.run("dmsetup", "info", "-c", "--noheadings", "-o",
                                           "name,uuid").stdout.splitlines()))
