"""Authorization: an unprivileged user's mutating calls are refused by polkit; root's work."""
# wkd-test: boot=1 timeout=240 disks=authz
import json
import os

from wkdtest import Scenario, disk, dm_exists

USER = "wkdtest"
# The error *name* (busctl prints only the message): a tiny dbus-fast client, run as the
# unprivileged user with the package's vendored copy.
PROBE = r"""
import asyncio, json, sys
sys.path.insert(0, "/usr/lib/wkd/vendor")
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    method, sig, body = json.loads(sys.argv[1])
    reply = await bus.call(Message(destination="org.wkd1", path="/org/wkd1",
        interface="org.wkd1.Manager", member=method, signature=sig, body=body))
    print(json.dumps([reply.message_type == MessageType.ERROR, reply.error_name]))
asyncio.run(main())
"""

with Scenario() as t:
    dev = disk("authz")
    t.busctl("Format", "ssa{sv}", dev, "", "0")
    calls = [
        ("CreateKek", "sa{sv}", ["authz-kek", "0"], ["authz-kek", {}]),
        ("Format", "ssa{sv}", [dev, "", "1", "force", "b", "true"],
         [dev, "", {}]),
        ("Unlock", "sa{sv}", [dev, "1", "name", "s", "authzmap"], [dev, {}]),
        ("Lock", "sa{sv}", [dev, "0"], [dev, {}]),
        ("Rewrap", "ssa{sv}", [dev, "wkd-default", "0"], [dev, "wkd-default", {}]),
        ("RewrapAll", "ssa{sv}", ["wkd-default", "authz-kek", "0"],
         ["wkd-default", "authz-kek", {}]),
    ]
    for method, sig, args, body in calls:
        proc = t.busctl(method, sig, *args, user=USER, check=False)
        t.check(f"busctl {method} as {USER} is refused", proc.returncode != 0,
                proc.stderr.strip())
        probe = t.run("python3", "-c", PROBE, json.dumps([method, sig, body]), user=USER,
                      check=False)
        try:
            is_error, name = json.loads(probe.stdout)
        except ValueError:
            is_error, name = False, probe.stderr.strip()[-300:]
        t.check(f"{method} as {USER} fails with org.wkd1.Error.NotAuthorized",
                is_error and name == "org.wkd1.Error.NotAuthorized", str(name))

    t.check("nothing changed: no mapping appeared", not dm_exists("authzmap"))
    keks = t.busctl_json("ListKeks", "a{sv}", "0")[0]
    t.check("nothing changed: the user's KEK does not exist",
            "authz-kek" not in {k[0] for k in keks}, str(keks))
    proc = t.busctl("ListVolumes", "a{sv}", "0", user=USER, check=False)
    t.check(f"read-only ListVolumes is allowed to {USER}", proc.returncode == 0, proc.stderr)

    t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", "authzmap")
    t.check("root's Unlock succeeds", os.path.exists("/dev/mapper/authzmap"))
    t.busctl("Lock", "sa{sv}", dev, "0")
    t.check("root's Lock succeeds", not dm_exists("authzmap"))
