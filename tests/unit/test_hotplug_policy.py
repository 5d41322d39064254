"""wkd.core.hotplug: the hot-plug decision core driven by synthetic block events (no udev
needed), and the pyudev adapter's glue (wkd.system.udev) without udev."""

from __future__ import annotations

import pytest

from wkd.core.hotplug import BlockEvent, Cleanup, HotplugPolicy, Nothing, Unlock
from wkd.errors import NotAWkdVolume
from wkd.system.udev import event_from_device

U1 = "4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00"
U2 = "9d0f1b2c-0000-4000-8000-00000000beef"
LUKS = "crypto_LUKS"


class Marked:
    """The daemon's callback: which (devnode, uuid) pairs are marked; records every call."""

    def __init__(self, *uuids: str) -> None:
        self.uuids = set(uuids)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, devnode: str, uuid: str) -> bool:
        self.calls.append((devnode, uuid))
        return uuid in self.uuids


_seq = iter(range(1, 1_000_000))


SDB = 8 << 8 | 16  # dev_t 8:16


def ev(action: str, devnode: str = "/dev/sdb", fs_type: str | None = LUKS,
       uuid: str | None = U1, seqnum: int | None = None, devnum: int = SDB) -> BlockEvent:
    return BlockEvent(action=action, devnode=devnode, fs_type=fs_type, fs_uuid=uuid,
                      seqnum=next(_seq) if seqnum is None else seqnum, devnum=devnum)


def kinds(actions):
    return [type(a).__name__ for a in actions]


def test_add_of_marked_luks_device_unlocks():
    marked = Marked(U1)
    policy = HotplugPolicy(marked)
    assert policy.on_event(ev("add"), now=100.0) == [Unlock(devnode="/dev/sdb", uuid=U1)]
    assert marked.calls == [("/dev/sdb", U1)]
    assert policy.unlocked == {"/dev/sdb": U1}


def test_non_luks_devices_are_ignored_without_asking():
    marked = Marked(U1)
    policy = HotplugPolicy(marked)
    for fs_type, uuid in (("ext4", U1), (None, None), ("crypto_LUKS", None),
                          ("crypto_BITLK", U1)):
        (action,) = policy.on_event(ev("add", fs_type=fs_type, uuid=uuid), now=1.0)
        assert isinstance(action, Nothing) and action.reason == "not a LUKS device"
    assert marked.calls == []


def test_luks_device_not_marked_is_left_alone():
    marked = Marked()  # LUKS, but not a wkd auto-unlock volume nor in wkdtab
    policy = HotplugPolicy(marked)
    assert policy.on_event(ev("add"), now=1.0) == [Nothing("not marked for auto-unlock")]
    assert policy.unlocked == {}
    # Its removal is still reported: the engine removes only mappings its records say it
    # made on that very device (maybe unlocked over D-Bus), so a clean-up is always safe.
    assert policy.on_event(ev("remove"), now=2.0) == [Cleanup("/dev/sdb", SDB)]


def test_removal_of_a_device_never_seen_as_luks_is_ignored():
    policy = HotplugPolicy(Marked(U1))
    policy.on_event(ev("add", fs_type="ext4", uuid=None), now=0.0)
    assert kinds(policy.on_event(ev("remove", fs_type=None, uuid=None), now=1.0)) == ["Nothing"]


def test_change_storm_is_debounced():
    marked = Marked()
    policy = HotplugPolicy(marked, debounce=2.0)
    results = [policy.on_event(ev("change"), now=10.0 + i * 0.1) for i in range(20)]
    assert results[0] == [Nothing("not marked for auto-unlock")]
    assert all(r == [Nothing("debounced")] for r in results[1:])
    assert len(marked.calls) == 1  # the token was read once, not 20 times
    # After the window the device is looked at again (the token may have changed).
    marked.uuids.add(U1)
    assert policy.on_event(ev("change"), now=12.5) == [Unlock("/dev/sdb", U1)]


def test_change_events_after_unlock_do_not_unlock_again():
    policy = HotplugPolicy(Marked(U1))
    assert kinds(policy.on_event(ev("add"), now=0.0)) == ["Unlock"]
    for t in (0.5, 5.0, 50.0):
        assert policy.on_event(ev("change"), now=t) == [Nothing("already unlocked")]


def test_remove_names_the_device_that_left():
    policy = HotplugPolicy(Marked(U1))
    policy.on_event(ev("add"), now=0.0)
    # udev "remove" events may lack ID_FS_* properties: devnode and dev_t are enough, and
    # the clean-up carries no volume UUID at all (a copy of a header has the same one).
    assert policy.on_event(ev("remove", fs_type=None, uuid=None), now=1.0) == [
        Cleanup(devnode="/dev/sdb", devnum=SDB)]
    assert policy.unlocked == {}
    assert kinds(policy.on_event(ev("remove"), now=2.0)) == ["Nothing"]  # only once


def test_replug_after_remove_unlocks_again_at_once():
    policy = HotplugPolicy(Marked(U1), debounce=2.0)
    policy.on_event(ev("add"), now=0.0)
    policy.on_event(ev("remove"), now=0.1)
    assert policy.on_event(ev("add"), now=0.2) == [Unlock("/dev/sdb", U1)]


def test_enumerate_then_queued_event_duplicate_is_suppressed():
    """Subscribe first, enumerate second: a disk plugged in between is seen twice."""
    marked = Marked(U1, U2)
    policy = HotplugPolicy(marked)
    # Enumeration (synthetic add, seqnum 0) of two existing disks.
    first = policy.on_event(ev("add", "/dev/sdb", uuid=U1, seqnum=0), now=0.0)
    second = policy.on_event(ev("add", "/dev/sdc", uuid=U2, seqnum=0), now=0.0)
    assert first == [Unlock("/dev/sdb", U1)] and second == [Unlock("/dev/sdc", U2)]
    # The queued real events for the same disks arrive afterwards.
    assert policy.on_event(ev("add", "/dev/sdc", uuid=U2, seqnum=4711), now=0.01) == [
        Nothing("already unlocked")]
    assert policy.on_event(ev("change", "/dev/sdb", uuid=U1, seqnum=4712), now=0.02) == [
        Nothing("already unlocked")]
    assert marked.calls == [("/dev/sdb", U1), ("/dev/sdc", U2)]


def test_stale_seqnum_is_ignored():
    policy = HotplugPolicy(Marked(U1))
    policy.on_event(ev("add", seqnum=100), now=0.0)
    policy.on_event(ev("remove", seqnum=101), now=0.1)
    # A replayed older "add" must not resurrect the mapping.
    assert policy.on_event(ev("add", seqnum=100), now=0.2) == [Nothing("stale event (seqnum 100)")]
    assert policy.unlocked == {}


def test_other_actions_ignored():
    policy = HotplugPolicy(Marked(U1))
    assert policy.on_event(ev("bind"), now=0.0) == [Nothing("action 'bind' ignored")]
    assert policy.unlocked == {}


def test_header_wiped_under_open_mapping_is_no_clean_up():
    """The device did not leave: its mapping keeps working (the kernel holds the key) and
    is removed only by Lock or when the device really goes."""
    policy = HotplugPolicy(Marked(U1))
    policy.on_event(ev("add"), now=0.0)
    assert kinds(policy.on_event(ev("change", fs_type=None, uuid=None), now=5.0)) == [
        "Nothing"]
    assert policy.unlocked == {}
    assert policy.on_event(ev("remove", fs_type=None, uuid=None), now=6.0) == [
        Cleanup("/dev/sdb", SDB)]


def test_same_node_new_volume_is_considered_afresh():
    policy = HotplugPolicy(Marked(U1, U2))
    policy.on_event(ev("add", uuid=U1), now=0.0)
    assert policy.on_event(ev("change", uuid=U2), now=0.5) == [Unlock("/dev/sdb", U2)]


def test_callback_error_is_reported_not_raised():
    def broken(devnode: str, uuid: str) -> bool:
        raise NotAWkdVolume(f"{devnode} has no wkd token")

    policy = HotplugPolicy(broken)
    (action,) = policy.on_event(ev("add"), now=0.0)
    assert isinstance(action, Nothing)
    assert action.reason == "auto-unlock check failed: /dev/sdb has no wkd token"


def test_unlock_failed_allows_retry():
    policy = HotplugPolicy(Marked(U1), debounce=1.0)
    policy.on_event(ev("add"), now=0.0)
    policy.unlock_failed("/dev/sdb")
    assert policy.on_event(ev("change"), now=0.5) == [Nothing("debounced")]
    assert policy.on_event(ev("change"), now=1.5) == [Unlock("/dev/sdb", U1)]


class _Props(dict):
    pass


class _Dev:
    """Shape of the pyudev.Device attributes event_from_device reads."""

    def __init__(self, node, props, action=None, seq=0, number=SDB):
        self.device_node = node
        self.properties = _Props(props)
        self.action = action
        self.sequence_number = seq
        self.device_number = number


@pytest.mark.parametrize(("dev", "action", "expected"), [
    (_Dev("/dev/sdb", {"ID_FS_TYPE": LUKS, "ID_FS_UUID": U1}, "change", 42), None,
     BlockEvent("change", "/dev/sdb", LUKS, U1, 42, SDB)),
    (_Dev("/dev/sdb", {"ID_FS_TYPE": LUKS, "ID_FS_UUID": U1}, None, 42), "add",
     BlockEvent("add", "/dev/sdb", LUKS, U1, 0, SDB)),
    (_Dev("/dev/sdc", {"ID_FS_TYPE": ""}, "remove", 7), None,
     BlockEvent("remove", "/dev/sdc", None, None, 7, SDB)),
])
def test_event_from_device(dev, action, expected):
    assert event_from_device(dev, action) == expected


def test_event_from_device_without_node():
    assert event_from_device(_Dev(None, {}, "add", 1)) is None


def test_monitor_dispatches_actions_to_the_daemon_callbacks():
    """The adapter's glue without udev: constructed unstarted, fed events directly."""
    import asyncio

    unlocked: list[tuple[str, str]] = []
    cleaned: list[tuple[str, int]] = []
    loop = asyncio.new_event_loop()
    try:
        from wkd.system.udev import UdevMonitor

        mon = UdevMonitor(loop, lambda d, u: unlocked.append((d, u)),
                          lambda d, n: cleaned.append((d, n)),
                          Marked(U1), clock=lambda: 0.0, start=False)
        mon._dispatch(ev("add"))
        mon._dispatch(ev("change", "/dev/sdc", uuid=U2))  # not marked
        mon._dispatch(ev("remove"))
        mon.close()
    finally:
        loop.close()
    assert unlocked == [("/dev/sdb", U1)]
    assert cleaned == [("/dev/sdb", SDB)]
