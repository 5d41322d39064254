"""wkd.wkdtab: the /etc/wkdtab parser, good lines and every kind of malformed line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wkd.errors import InvalidConfig
from wkd.wkdtab import (
    WkdtabEntry,
    device_node,
    load_wkdtab,
    parse_timespan,
    parse_wkdtab,
    parse_wkdtab_lenient,
)

UUID = "4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00"


def one(text: str) -> WkdtabEntry:
    (entry,) = parse_wkdtab(text)
    return entry


def test_comments_blank_lines_and_defaults():
    text = f"""
# a comment
   # indented comment

data  UUID={UUID}
"""
    entry = one(text)
    assert entry.name == "data"
    assert entry.device == f"UUID={UUID}"
    assert entry.device_node == f"/dev/disk/by-uuid/{UUID}"
    assert entry.mapped_device == "/dev/mapper/data"
    assert entry.uuid == UUID
    assert entry.line == 5
    assert not (entry.read_only or entry.discard or entry.nofail or entry.noauto or
                entry.netdev)
    assert entry.timeout is None and entry.effective_device_timeout is None


@pytest.mark.parametrize(("device", "node"), [
    ("/dev/sdb1", "/dev/sdb1"),
    ("/dev/disk/by-id/nvme-X-part2", "/dev/disk/by-id/nvme-X-part2"),
    (f"UUID={UUID}", f"/dev/disk/by-uuid/{UUID}"),
    ("PARTUUID=0a1b2c3d-01", "/dev/disk/by-partuuid/0a1b2c3d-01"),
    ("LABEL=backup", "/dev/disk/by-label/backup"),
    ("LABEL=my/disk", "/dev/disk/by-label/my\\x2fdisk"),  # udev encodes "/" as \x2f
    ("PARTLABEL=data\\x20x", "/dev/disk/by-partlabel/data\\x5cx20x"),
])
def test_device_forms(device, node):
    assert device_node(device) == node
    assert one(f"v {device}").device_node == node


def test_options():
    entry = one(f"v UUID={UUID} nofail,read-only,discard,timeout=1min30s,_netdev,luks")
    assert entry.nofail and entry.read_only and entry.discard and entry.netdev
    assert entry.timeout == 90.0
    assert entry.effective_device_timeout == 90.0
    assert one("v /dev/sdb readonly").read_only
    assert one("v /dev/sdb noauto").noauto
    assert not one("v /dev/sdb auto").noauto


def test_systemd_passthrough_options():
    entry = one("v /dev/sdb x-systemd.device-timeout=20,timeout=60,"
                "x-systemd.after=pcscd.socket,x-systemd.before=foo.service,x-initrd.attach")
    assert entry.device_timeout == 20.0 and entry.timeout == 60.0
    assert entry.effective_device_timeout == 20.0
    assert entry.after == ("pcscd.socket",) and entry.before == ("foo.service",)
    assert entry.extra_options == ("x-initrd.attach",)


def test_crypttab_style_key_column_none_is_accepted():
    assert one(f"v UUID={UUID} none nofail").nofail
    assert one("v /dev/sdb -").device == "/dev/sdb"
    assert not one("v /dev/sdb none").nofail


def test_several_entries_keep_order_and_lines():
    entries = parse_wkdtab("a /dev/sda\n\nb /dev/sdb nofail\n# c\nc /dev/sdc\n")
    assert [(e.name, e.line) for e in entries] == [("a", 1), ("b", 3), ("c", 5)]


@pytest.mark.parametrize(("text", "message"), [
    ("data", "/etc/wkdtab:1: expected 'name device [options]'"),
    ("# ok\n\nv /dev/sdb foo", "/etc/wkdtab:3: unknown option 'foo'"),
    ("v /dev/sdb nofail=yes", "option 'nofail' takes no value"),
    ("v /dev/sdb nofail,,discard", "empty option"),
    ("v /dev/sdb nofail,", "empty option"),
    ("v /dev/sdb timeout", "option 'timeout' needs a value"),
    ("v /dev/sdb timeout=", "option 'timeout' needs a value"),
    ("v /dev/sdb timeout=soon", "invalid time span"),
    ("v /dev/sdb timeout=5parsecs", "unknown time unit"),
    ("v /dev/sdb x-systemd.after=", "needs a unit name"),
    ("v /dev/sdb auto,noauto", "contradict"),
    ("v sdb", "neither a /dev path nor"),
    ("v /etc/passwd", "not a node under /dev/"),
    ("v /dev/../etc/shadow", "not a node under /dev/"),
    ("v FOO=bar", "neither a /dev path nor"),
    ("v UUID=", "empty UUID= value"),
    ("v /dev/sdb /etc/keyfile nofail", "unexpected key-file field '/etc/keyfile'"),
    ("v /dev/sdb none nofail extra", "too many fields"),
    ("bad/name /dev/sdb", "/etc/wkdtab:1: mapping name must not contain '/'"),
    ("-x /dev/sdb", "/etc/wkdtab:1:"),
    ("a /dev/sda\nb /dev/sdb\na /dev/sdc", "/etc/wkdtab:3: duplicate name 'a' (first on line 1)"),
])
def test_malformed_lines_name_file_and_line(text, message):
    with pytest.raises(InvalidConfig) as info:
        parse_wkdtab(text)
    assert message in str(info.value)
    assert str(info.value).startswith("/etc/wkdtab:")


def test_error_uses_given_path():
    with pytest.raises(InvalidConfig, match=r"^/tmp/t:2: unknown option 'bogus'$"):
        parse_wkdtab("a /dev/sda\nb /dev/sdb bogus", path="/tmp/t")


def test_lenient_keeps_good_lines():
    entries, errors = parse_wkdtab_lenient("a /dev/sda\nb /dev/sdb bogus\nc /dev/sdc\n"
                                           "a /dev/sdd\n")
    assert [e.name for e in entries] == ["a", "c"]
    assert [str(e).split(":")[1] for e in errors] == ["2", "4"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("2min", 120.0), ("1min 30s", 90.0), ("1h", 3600.0),
    ("500ms", 0.5), ("1.5s", 1.5), ("0", 0.0), ("infinity", 0.0),
])
def test_timespan(text, seconds):
    assert parse_timespan(text) == seconds


def test_matches_by_uuid_or_node():
    by_uuid = one(f"v UUID={UUID.upper()}")
    assert by_uuid.matches("/dev/sdz", UUID)
    assert not by_uuid.matches("/dev/sdz", None)
    by_path = one("v /dev/sdb")
    assert by_path.matches("/dev/sdb", UUID) and not by_path.matches("/dev/sdc", UUID)


def test_load_missing_file_is_empty(tmp_path):
    assert load_wkdtab(str(tmp_path / "absent")) == ()
    (tmp_path / "wkdtab").write_text("v /dev/sdb bogus\n")
    with pytest.raises(InvalidConfig, match="wkdtab:1: unknown option"):
        load_wkdtab(str(tmp_path / "wkdtab"))
    (tmp_path / "bin").write_bytes(b"v /dev/sdb \xff\n")
    with pytest.raises(InvalidConfig, match="not UTF-8"):
        load_wkdtab(str(tmp_path / "bin"))


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text):
    """Any input gives entries or InvalidConfig with a line number, nothing else."""
    try:
        parse_wkdtab(text)
    except InvalidConfig as exc:
        assert str(exc).startswith("/etc/wkdtab:")


def test_resolve_device(tmp_path):
    from wkd.errors import DeviceNotFound

    entry = one(f"v UUID={UUID}")
    with pytest.raises(DeviceNotFound, match="for wkdtab entry 'v' does not exist"):
        entry.resolve_device()
    assert one("v /dev/null").resolve_device() == "/dev/null"


def test_load_entry_for_attach_tolerates_other_bad_lines(tmp_path):
    from wkd.errors import VolumeNotFound
    from wkd.wkdtab import load_wkdtab_entry

    table = tmp_path / "wkdtab"
    table.write_text("good /dev/sdb discard\nbroken /dev/sdc bogus\n")
    assert load_wkdtab_entry("good", str(table)).discard
    with pytest.raises(VolumeNotFound, match=r"no entry named 'broken'; malformed lines: "
                                             r".*wkdtab:2: unknown option 'bogus'"):
        load_wkdtab_entry("broken", str(table))
    with pytest.raises(VolumeNotFound, match="does not exist"):
        load_wkdtab_entry("good", str(tmp_path / "absent"))
