"""Every org.wkd1 method through dbus-fast and through real busctl, on the real engine."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from dbus_fast import Message, MessageType, Variant

from tests.bus.conftest import (
    CallError,
    busctl,
    call,
    format_image,
    get_all,
    get_prop,
)

VOL = "org.wkd1.Volume"
JOB = "org.wkd1.Job"


def _dm_available() -> bool:
    return os.path.exists("/dev/mapper/control")


async def test_manager_properties(bus):
    props = await get_all(bus, "/org/wkd1", "org.wkd1.Manager")
    assert props["Version"]
    assert props["HsmState"] == "ready"
    # The embedded default is a software token and says so plainly.
    assert props["HsmSoftware"] is True
    assert props["HsmEmbedded"] is True
    assert props["HsmToken"] == "wkd-embedded"


async def test_kek_create_and_list(bus):
    (kek_id,) = await call(bus, "CreateKek", "sa{sv}", ["py-kek-1", {}])
    assert len(kek_id) >= 2 and all(c in "0123456789abcdef" for c in kek_id)
    (keks,) = await call(bus, "ListKeks", "a{sv}", [{}])
    by_label = {k[0]: k for k in keks}
    assert by_label["py-kek-1"][1] == kek_id
    assert by_label["py-kek-1"][2] == 256
    assert "wkd-default" in by_label
    with pytest.raises(CallError) as e:
        await call(bus, "CreateKek", "sa{sv}", ["py-kek-1", {}])
    assert e.value.name == "org.wkd1.Error.KekExists"


async def test_format_unlock_rewrap_lock_cycle(bus, image):
    path = await format_image(bus, image, options={"label": Variant("s", "cycle")})
    assert path.startswith("/org/wkd1/volume/")
    props = await get_all(bus, path, VOL)
    assert props["Device"] == image
    assert props["Kek"] == "wkd-default"
    assert props["Label"] == "cycle"
    assert props["Active"] is False
    uuid = props["Uuid"]
    assert path.endswith(uuid.replace("-", "_"))

    (listed,) = await call(bus, "ListVolumes", "a{sv}", [{}])
    assert path in listed

    # verify-only: the HSM can open it, nothing is activated.
    for volume in (image, uuid, path):
        (obj,) = await call(bus, "Unlock", "sa{sv}", [volume, {"verify-only": Variant("b", True)}])
        assert obj == path
    (mapped,) = await call(bus, "Unlock", "a{sv}", [{"verify-only": Variant("b", True)}],
                           path=path, interface=VOL)
    assert mapped == ""
    assert await get_prop(bus, path, VOL, "Active") is False

    if not _dm_available():
        with pytest.raises(CallError) as e:
            await call(bus, "Unlock", "sa{sv}", [uuid, {}])
        assert e.value.name == "org.wkd1.Error.DeviceMapperUnavailable"
        with pytest.raises(CallError) as e:
            await call(bus, "Unlock", "a{sv}", [{}], path=path, interface=VOL)
        assert e.value.name == "org.wkd1.Error.DeviceMapperUnavailable"

    await call(bus, "CreateKek", "sa{sv}", [f"cyc-{uuid[:8]}", {}])
    await call(bus, "Rewrap", "ssa{sv}", [uuid, f"cyc-{uuid[:8]}", {}])
    assert await get_prop(bus, path, VOL, "Kek") == f"cyc-{uuid[:8]}"
    await call(bus, "Rewrap", "sa{sv}", ["wkd-default", {}], path=path, interface=VOL)
    assert await get_prop(bus, path, VOL, "Kek") == "wkd-default"
    await call(bus, "Unlock", "sa{sv}", [path, {"verify-only": Variant("b", True)}])

    # Lock of a locked volume: the engine says so with a typed error, or accepts it.
    try:
        await call(bus, "Lock", "sa{sv}", [uuid, {}])
    except CallError as e:
        assert e.name in {"org.wkd1.Error.NotUnlocked", "org.wkd1.Error.DeviceMapperUnavailable"}
    try:
        await call(bus, "Lock", "a{sv}", [{}], path=path, interface=VOL)
    except CallError as e:
        assert e.name in {"org.wkd1.Error.NotUnlocked", "org.wkd1.Error.DeviceMapperUnavailable"}


async def _signals(bus, match: str) -> asyncio.Queue[Message]:
    q: asyncio.Queue[Message] = asyncio.Queue()
    await call_dbus(bus, "AddMatch", "s", [match])

    def handler(msg: Message) -> bool:
        if msg.message_type == MessageType.SIGNAL:
            q.put_nowait(msg)
        return False

    bus.add_message_handler(handler)
    return q


async def call_dbus(bus, member, sig, body):
    reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                   path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member=member,
                                   signature=sig, body=body))
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return reply.body


async def _next(q, pred, timeout=30.0):
    async def loop():
        while True:
            m = await q.get()
            if pred(m):
                return m
    return await asyncio.wait_for(loop(), timeout)


async def test_object_manager_signals(bus, image):
    q = await _signals(bus, "type='signal',sender='org.wkd1',path='/org/wkd1',"
                            "interface='org.freedesktop.DBus.ObjectManager'")
    pc = await _signals(bus, "type='signal',sender='org.wkd1',"
                             "interface='org.freedesktop.DBus.Properties'")
    path = await format_image(bus, image)
    added = await _next(q, lambda m: m.member == "InterfacesAdded" and m.body[0] == path)
    # From the manager's path, as the D-Bus spec says, with the full property set.
    assert added.path == "/org/wkd1"
    props = added.body[1][VOL]
    assert props["Device"].value == image
    assert props["Kek"].value == "wkd-default"

    (managed,) = await call(bus, "GetManagedObjects", "", [], path="/org/wkd1",
                            interface="org.freedesktop.DBus.ObjectManager")
    assert managed[path][VOL]["Uuid"].value == props["Uuid"].value

    # A change (rewrap) arrives as PropertiesChanged on the volume object.
    label = "om-" + props["Uuid"].value[:8]
    await call(bus, "CreateKek", "sa{sv}", [label, {}])
    await call(bus, "Rewrap", "ssa{sv}", [path, label, {}])
    changed = await _next(pc, lambda m: m.path == path and "Kek" in m.body[1])
    assert changed.body[0] == VOL
    assert changed.body[1]["Kek"].value == label


async def test_rewrap_all_job(bus, tmp_path):
    imgs = []
    for i in range(3):
        p = tmp_path / f"r{i}.img"
        with open(p, "wb") as f:
            f.truncate(32 << 20)
        imgs.append(str(p))
    src, dst = "ra-src", "ra-dst"
    for k in (src, dst):
        try:
            await call(bus, "CreateKek", "sa{sv}", [k, {}])
        except CallError as e:
            assert e.name == "org.wkd1.Error.KekExists"
    paths = [await format_image(bus, p, src) for p in imgs]
    q = await _signals(bus, "type='signal',sender='org.wkd1',interface='org.wkd1.Job'")
    (job,) = await call(bus, "RewrapAll", "ssa{sv}", [src, dst, {}])
    assert job.startswith("/org/wkd1/job/")
    state = await get_prop(bus, job, JOB, "State")
    if state == "running":
        done = await _next(q, lambda m: m.path == job and m.member == "Completed")
        success, error_name, _n_done, n_failed = done.body
        assert success is True and error_name == "" and n_failed == 0
    props = await get_all(bus, job, JOB)
    assert props["State"] == "completed"
    assert props["Operation"] == "rewrap-all"
    assert props["Progress"] == 1.0
    _total, rewrapped, _skipped, failures = props["Result"]
    assert rewrapped >= 3 and failures == []
    for p in paths:
        assert await get_prop(bus, p, VOL, "Kek") == dst

    with pytest.raises(CallError) as e:
        await call(bus, "RewrapAll", "ssa{sv}", [src, "no-such-kek", {}])
    assert e.value.name == "org.wkd1.Error.KekNotFound"


# --- the same through real busctl --------------------------------------------------------

def _busctl_call(address, *args, path="/org/wkd1", iface="org.wkd1.Manager"):
    return busctl(address, "--json=short", "call", "org.wkd1", path, iface, *args)


def test_busctl_every_method(wkd_daemon, image):
    a = wkd_daemon.address
    r = _busctl_call(a, "CreateKek", "sa{sv}", "busctl-kek", "0")
    kek_id = json.loads(r.stdout)["data"][0]
    r = _busctl_call(a, "ListKeks", "a{sv}", "0")
    assert ["busctl-kek", kek_id, 256] in json.loads(r.stdout)["data"][0]

    r = _busctl_call(a, "Format", "ssa{sv}", image, "", "1", "label", "s", "bc")
    path = json.loads(r.stdout)["data"][0]
    r = _busctl_call(a, "ListVolumes", "a{sv}", "0")
    assert path in json.loads(r.stdout)["data"][0]
    r = _busctl_call(a, "Unlock", "sa{sv}", image, "1", "verify-only", "b", "true")
    assert json.loads(r.stdout)["data"][0] == path
    r = _busctl_call(a, "Unlock", "a{sv}", "1", "verify-only", "b", "true", path=path,
                     iface="org.wkd1.Volume")
    assert json.loads(r.stdout)["data"][0] == ""
    _busctl_call(a, "Rewrap", "ssa{sv}", path, "busctl-kek", "0")
    _busctl_call(a, "Rewrap", "sa{sv}", "wkd-default", "0", path=path, iface="org.wkd1.Volume")
    r = busctl(a, "get-property", "org.wkd1", path, "org.wkd1.Volume", "Kek")
    assert r.stdout.strip() == 's "wkd-default"'
    r = _busctl_call(a, "RewrapAll", "ssa{sv}", "busctl-kek", "wkd-default", "0")
    assert json.loads(r.stdout)["data"][0].startswith("/org/wkd1/job/")
    if not _dm_available():
        r = busctl(a, "call", "org.wkd1", "/org/wkd1", "org.wkd1.Manager", "Unlock",
                   "sa{sv}", image, "0", check=False)
        assert r.returncode != 0 and "device-mapper" in r.stderr.lower()
    r = busctl(a, "call", "org.wkd1", "/org/wkd1", "org.wkd1.Manager", "Lock", "sa{sv}",
               image, "0", check=False)
    assert "Traceback" not in r.stderr
    r = busctl(a, "introspect", "org.wkd1", "/org/wkd1")
    assert "org.wkd1.Manager" in r.stdout
    r = busctl(a, "tree", "org.wkd1")
    assert path in r.stdout
