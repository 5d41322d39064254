"""wkd.core.volumes: conditions (ok / damaged / duplicate), the device an operation acts on,
and what a newly seen device means for the registry. No I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core_helpers import U1, U2, dev_t, dm, mapping, probe, token
from wkd import errors
from wkd.core.volumes import assess, choose, sighting, volume_info
from wkd.model import VolumeCondition
from wkd.values import DevicePath


def test_a_healthy_volume():
    a = assess(U1, "/dev/vdb", [probe()])
    assert a is not None and a.condition is VolumeCondition.OK and a.detail == ""
    info = volume_info(a, dm())
    assert (info.uuid, info.device, info.kek_label, info.key_bits) == (U1, "/dev/vdb",
                                                                       "kek-a", 512)
    assert info.mapping is None and info.condition is VolumeCondition.OK


def test_a_header_libcryptsetup_refuses_is_damaged_in_the_view_and_for_every_call():
    p = probe(damaged="its checksum or metadata does not verify")
    a = assess(U1, "/dev/vdb", [p])
    assert a is not None and a.condition is VolumeCondition.DAMAGED
    assert "libcryptsetup refuses" in a.detail and "/dev/vdb" in a.detail
    info = volume_info(a, dm())
    assert info.condition is VolumeCondition.DAMAGED and info.kek_label == ""
    with pytest.raises(errors.VolumeDamaged):
        choose(U1, a, None)
    with pytest.raises(errors.VolumeDamaged):
        choose(DevicePath("/dev/vdb"), a, p)


def test_only_invalid_tokens_is_damaged_one_valid_token_is_enough():
    bad = probe(tokens={}, invalid={3: "field 'key_bytes' must be the integer 32 or 64"})
    a = assess(U1, None, [bad])
    assert a is not None and a.condition is VolumeCondition.DAMAGED
    assert "wkd token 3" in a.detail and "key_bytes" in a.detail
    mixed = probe(tokens={0: token()}, invalid={3: "broken"})
    assert assess(U1, None, [mixed]).condition is VolumeCondition.OK


def test_two_devices_with_one_uuid_are_a_duplicate_named_in_full():
    a = assess(U1, "/dev/vdb", [probe("/dev/vdc", rdev=dev_t(253, 32)), probe("/dev/vdb")])
    assert a is not None and a.condition is VolumeCondition.DUPLICATE
    assert a.primary.device.path == "/dev/vdb", "the recorded device stays the one shown"
    assert "/dev/vdb" in a.detail and "/dev/vdc" in a.detail
    with pytest.raises(errors.DuplicateVolume) as e:
        choose(U1, a, None)
    assert "/dev/vdb" in e.value.message and "/dev/vdc" in e.value.message
    # An administrator picks one by path.
    vdc = probe("/dev/vdc", rdev=dev_t(253, 32))
    assert choose(DevicePath("/dev/vdc"), a, vdc) is vdc


def test_a_damaged_copy_still_makes_a_duplicate():
    a = assess(U1, "/dev/vdb", [probe(), probe("/dev/vdc", damaged="bad checksum")])
    assert a is not None and a.condition is VolumeCondition.DUPLICATE


@pytest.mark.parametrize("p", [
    probe(luks=False),  # not LUKS at all
    probe(uuid=U2),  # another volume
    probe(tokens={}),  # LUKS2 without a wkd token
])
def test_devices_that_do_not_carry_the_volume(p):
    assert assess(U1, "/dev/vdb", [p]) is None
    with pytest.raises(errors.VolumeNotFound):
        choose(U1, None, None)


def test_choose_by_path_errors():
    with pytest.raises(errors.NotAWkdVolume):
        choose(DevicePath("/dev/vdb"), None, probe(luks=False))
    with pytest.raises(errors.NotAWkdVolume):
        choose(DevicePath("/dev/vdb"), None, probe(tokens={}))
    with pytest.raises(errors.DeviceNotFound):
        choose(DevicePath("/dev/vdb"), None, None)


def test_mapping_shown_is_the_one_on_the_volume_s_device():
    a = assess(U1, "/dev/vdb", [probe()])
    info = volume_info(a, dm(mapping("data", on="vdb")))
    assert info.mapping is not None and info.mapping.name == "data"
    assert info.mapping.device == "/dev/mapper/data"
    # A mapping of the same UUID on a copy is not this device's mapping.
    dup = assess(U1, "/dev/vdb", [probe(), probe("/dev/vdc", rdev=dev_t(253, 32))])
    on_copy = mapping("copy", on="vdc", on_dev=dev_t(253, 32))
    assert volume_info(dup, dm(on_copy)).mapping is None


def test_sighting_never_takes_over_silently():
    known = {U1: "/dev/vdb"}
    assert sighting(U1, "/dev/vdb", known, still_carries=True).record is False
    dup = sighting(U1, "/dev/vdc", known, still_carries=True)
    assert dup.duplicate_of == "/dev/vdb" and not dup.record
    moved = sighting(U1, "/dev/vdc", known, still_carries=False)
    assert moved.record and moved.moved_from == "/dev/vdb"
    assert sighting(U2, "/dev/vdc", known, still_carries=False).record


paths = st.sampled_from(["/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/sda"])


@given(st.lists(st.tuples(paths, st.sampled_from(["ok", "damaged", "other", "none"])),
                max_size=6, unique_by=lambda t: t[0]),
       st.one_of(st.none(), paths))
def test_assess_properties(devices, recorded):
    """Whatever is present: more than one carrier is always DUPLICATE and refused by UUID;
    a single carrier is OK or DAMAGED; the recorded device is shown when it carries."""
    def make(path, kind):
        rdev = dev_t(253, 16 + ["/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/sda"].index(path))
        if kind == "ok":
            return probe(path, rdev=rdev)
        if kind == "damaged":
            return probe(path, rdev=rdev, damaged="bad")
        if kind == "other":
            return probe(path, uuid=U2, rdev=rdev)
        return probe(path, rdev=rdev, luks=False)

    probes = [make(p, k) for p, k in devices]
    carriers = [p for p, k in devices if k in ("ok", "damaged")]
    a = assess(U1, recorded, probes)
    if not carriers:
        assert a is None
        return
    assert a is not None and {p.device.path for p in a.carriers} == set(carriers)
    if recorded in carriers:
        assert a.primary.device.path == recorded
    if len(carriers) > 1:
        assert a.condition is VolumeCondition.DUPLICATE
        with pytest.raises(errors.DuplicateVolume):
            choose(U1, a, None)
    else:
        kind = dict(devices)[carriers[0]]
        assert a.condition is (VolumeCondition.OK if kind == "ok" else VolumeCondition.DAMAGED)
    assert volume_info(a, dm()).condition is a.condition
