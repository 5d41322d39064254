"""wkd.core.mapping and wkd.core.format: Unlock/Lock/clean-up and Format decisions, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core_helpers import U1, U2, dev_t, device, dm, mapping, record, token
from wkd import errors
from wkd.core import format as fmt
from wkd.core.facts import FormatFacts, FormatIntent, FormatObservation, HeaderRead
from wkd.core.mapping import plan_cleanup, plan_lock, plan_unlock
from wkd.model import LockOptions, UnlockOptions
from wkd.values import MappingName

VDB = device()

# --- Unlock -------------------------------------------------------------------------------


def test_unlock_maps_under_the_default_name():
    plan = plan_unlock(U1, VDB, dm(), UnlockOptions())
    assert plan.existing is None and plan.name == "wkd-" + U1


def test_unlock_is_idempotent_and_names_the_existing_mapping_when_asked_for_another():
    state = dm(mapping("data"))
    assert plan_unlock(U1, VDB, state, UnlockOptions()).existing.name == "data"
    assert plan_unlock(U1, VDB, state,
                       UnlockOptions(name=MappingName("data"))).existing.name == "data"
    with pytest.raises(errors.AlreadyUnlocked) as e:
        plan_unlock(U1, VDB, state, UnlockOptions(name=MappingName("other")))
    assert "data" in e.value.message and "other" in e.value.message


def test_unlock_refusals_before_any_key_is_unwrapped():
    with pytest.raises(errors.DeviceMapperUnavailable):
        plan_unlock(U1, VDB, dm(available=False), UnlockOptions())
    with pytest.raises(errors.MappingNameInUse):
        plan_unlock(U1, VDB, dm(mapping("data", uuid=U2, on="vdz")),
                    UnlockOptions(name=MappingName("data")))
    # verify-only needs no device-mapper and makes nothing
    plan = plan_unlock(U1, VDB, dm(available=False), UnlockOptions(verify_only=True))
    assert plan.name is None and plan.existing is None


def test_a_mapping_of_a_copy_is_not_this_device_s():
    copy = mapping("copy", on="vdc", on_dev=dev_t(253, 32))
    plan = plan_unlock(U1, VDB, dm(copy), UnlockOptions())
    assert plan.existing is None and plan.name == "wkd-" + U1


# --- Lock ---------------------------------------------------------------------------------


def test_lock_of_a_mapping_wkd_made():
    plan = plan_lock(U1, VDB, dm(mapping("data")), [record("data")], LockOptions())
    assert plan.mapping.name == "data" and plan.ours


def test_lock_of_a_mapping_wkd_did_not_make_needs_force():
    state = dm(mapping("data"))
    with pytest.raises(errors.ForeignMapping) as e:
        plan_lock(U1, VDB, state, [], LockOptions())
    assert "data" in e.value.message and "force" in e.value.message
    # A record of another volume, or of the same name on another device, is not ours.
    with pytest.raises(errors.ForeignMapping):
        plan_lock(U1, VDB, state, [record("data", uuid=U2)], LockOptions())
    with pytest.raises(errors.ForeignMapping):
        plan_lock(U1, VDB, state, [record("data", device_path="/dev/vdc",
                                          backing=dev_t(253, 32))], LockOptions())
    plan = plan_lock(U1, VDB, state, [], LockOptions(force=True))
    assert not plan.ours


def test_lock_of_a_locked_volume():
    with pytest.raises(errors.NotUnlocked):
        plan_lock(U1, VDB, dm(), [], LockOptions())


# --- clean-up -----------------------------------------------------------------------------


def test_cleanup_removes_what_wkd_made_on_the_device_that_left():
    state = dm(mapping("data"))
    (removal,) = plan_cleanup("/dev/vdb", dev_t(253, 16), state, [record("data")])
    assert removal.mapping.name == "data"


def test_unplugging_a_copy_leaves_the_original_mapped():
    """Issue 10.3: a copy of the header (same UUID) on /dev/vdc is plugged and unplugged
    while the original on /dev/vdb is mapped."""
    state = dm(mapping("data"))
    assert plan_cleanup("/dev/vdc", dev_t(253, 32), state, [record("data")]) == []


def test_cleanup_leaves_mappings_wkd_did_not_make():
    assert plan_cleanup("/dev/vdb", dev_t(253, 16), dm(mapping("data")), []) == []


def test_cleanup_matches_by_name_when_the_dev_t_is_unknown():
    gone = mapping("data")
    gone = type(gone)(name=gone.name, dm_uuid=gone.dm_uuid, node=gone.node, dev=gone.dev,
                      backing_names=("vdb",), backing_devs=())  # the slave link dangles
    (removal,) = plan_cleanup("/dev/vdb", 0, dm(gone), [record("data")])
    assert removal.mapping.name == "data"


def test_cleanup_of_a_mapping_whose_disk_vanished_from_sysfs():
    gone = mapping("data")
    gone = type(gone)(name=gone.name, dm_uuid=gone.dm_uuid, node=gone.node, dev=gone.dev)
    (removal,) = plan_cleanup("/dev/vdb", dev_t(253, 16), dm(gone), [record("data")])
    assert removal.mapping.name == "data"
    # ... but only for the device its record names.
    assert plan_cleanup("/dev/vdc", dev_t(253, 32), dm(gone), [record("data")]) == []


names = st.sampled_from(["a", "b", "c"])
nodes = st.sampled_from([("vdb", dev_t(253, 16)), ("vdc", dev_t(253, 32)),
                         ("vdd", dev_t(253, 48))])


@given(st.lists(st.tuples(names, nodes, st.sampled_from([U1, U2])), max_size=4,
                unique_by=lambda t: t[0]),
       st.lists(st.tuples(names, nodes, st.sampled_from([U1, U2])), max_size=4),
       nodes)
def test_cleanup_only_ever_removes_mappings_on_the_removed_device(maps, recs, removed):
    state = dm(*(mapping(n, uuid=u, on=k, on_dev=d) for n, (k, d), u in maps))
    records = [record(n, uuid=u, device_path=f"/dev/{k}", backing=d) for n, (k, d), u in recs]
    for removal in plan_cleanup(f"/dev/{removed[0]}", removed[1], state, records):
        assert removed[1] in removal.mapping.backing_devs
        assert removal.record in records and removal.record.matches(removal.mapping)


# --- Format -------------------------------------------------------------------------------


def _facts(in_use=(), signatures=(), size=64 << 20):
    return FormatFacts(device=device(size=size), in_use=tuple(in_use),
                       signatures=tuple(signatures))


def test_format_checks():
    fmt.check_formattable(_facts(), force=False)
    with pytest.raises(errors.DeviceInUse):
        fmt.check_formattable(_facts(in_use=["mounted at /mnt"]), force=True)
    with pytest.raises(errors.InvalidArgument, match="too small"):
        fmt.check_formattable(_facts(size=8 << 20), force=True)
    with pytest.raises(errors.DeviceHasSignature):
        fmt.check_formattable(_facts(signatures=["ext4"]), force=False)
    fmt.check_formattable(_facts(signatures=["ext4"]), force=True)


def _intent(recovery=False):
    return FormatIntent(device="/dev/vdb", rdev=dev_t(253, 16), uuid=U1, token=token(blob=7),
                        label=None, recovery=recovery, region=16 << 20, before="b" * 64)


def _seen(**kw):
    return FormatObservation(present=True, **kw)


def _loaded(uuid=U1, blob=7):
    from tests.unit.core_helpers import header

    return HeaderRead(path="/dev/vdb", header=header(uuid=uuid, tokens={0: token(blob=blob)}))


@pytest.mark.parametrize(("seen", "recovery", "action"), [
    (FormatObservation(present=False), False, fmt.Recovery.WAIT),
    (_seen(read=_loaded()), False, fmt.Recovery.COMPLETE),
    (_seen(read=_loaded(uuid=U2)), False, fmt.Recovery.FORGET),
    (_seen(read=_loaded(blob=9)), False, fmt.Recovery.FORGET),
    (_seen(read=HeaderRead(path="/dev/vdb"), region_digest="b" * 64), False,
     fmt.Recovery.FORGET),
    (_seen(read=HeaderRead(path="/dev/vdb"), region_digest="c" * 64,
           foreign_signatures=("ext4",)), False, fmt.Recovery.FORGET),
    (_seen(read=HeaderRead(path="/dev/vdb"), region_digest="c" * 64,
           in_use=("mounted at /mnt",)), False, fmt.Recovery.WAIT),
    (_seen(read=HeaderRead(path="/dev/vdb"), region_digest="c" * 64), False,
     fmt.Recovery.REDO),
    (_seen(read=HeaderRead(path="/dev/vdb", damaged="bad", raw_uuid=U1),
           region_digest="c" * 64), False, fmt.Recovery.REDO),
    (_seen(read=HeaderRead(path="/dev/vdb"), region_digest="c" * 64), True,
     fmt.Recovery.ROLL_BACK),
    (_seen(read=_loaded()), True, fmt.Recovery.COMPLETE),
])
def test_format_recovery(seen, recovery, action):
    plan = fmt.plan_recovery(_intent(recovery), seen)
    assert plan.action is action
    assert "/dev/vdb" in plan.reason
