"""wkd.system.generator: systemd escaping, golden unit output per wkdtab case, its files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from wkd.system import generator as gen
from wkd.wkdtab import parse_wkdtab

GOLDEN = Path(__file__).parent / "golden" / "generator"
UPDATE = os.environ.get("WKD_UPDATE_GOLDEN") == "1"
UUID = "4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00"

CASES = {
    "plain": "data /dev/sdb\n",
    "uuid": f"data UUID={UUID}\n",
    "nofail": f"data UUID={UUID} nofail\n",
    "readonly_discard": "archive LABEL=archive read-only,discard\n",
    "timeout": "slow PARTUUID=0a1b2c3d-01 timeout=2min\n",
    "device_timeout": "slow /dev/sdb timeout=45,x-systemd.device-timeout=10\n",
    "noauto": "manual /dev/sdb noauto\n",
    "netdev": "remote /dev/sdc _netdev,x-systemd.after=pcscd.socket\n",
    "escaped_name": "my-vol.2 /dev/disk/by-id/usb-Vendor_Disk-0:0\n",
    "multiple": (f"# boot volumes\nroot2 UUID={UUID}\n"
                 "home /dev/sdb discard\n"
                 "usb LABEL=stick nofail,noauto\n"),
}


def dump(files: list[gen.GeneratedFile]) -> str:
    """A stable text picture of the generator output: files and symlinks by path."""
    out = []
    for item in sorted(files, key=lambda f: f.path):
        if item.symlink_to is not None:
            out.append(f"=== {item.path} -> {item.symlink_to}\n")
        else:
            out.append(f"=== {item.path}\n{item.content}")
    return "".join(out)


def dump_dir(root: Path) -> str:
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_symlink() or p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out.append(f"=== {rel} -> {os.readlink(path)}\n")
        else:
            out.append(f"=== {rel}\n{path.read_text()}")
    return "".join(out)


# --- escaping --------------------------------------------------------------------------

NAME_CASES = {
    "data": "data",
    "my-vol.2": "my\\x2dvol.2",
    ".hidden": "\\x2ehidden",
    "a.b": "a.b",
    "x:y_z": "x:y_z",
    "a b": "a\\x20b",
    "back\\slash": "back\\x5cslash",
    "a/b": "a-b",
    "ü": "\\xc3\\xbc",
    "#+=@": "\\x23\\x2b\\x3d\\x40",
}
PATH_CASES = {
    "/": "-",
    "/dev/sdb": "dev-sdb",
    "//dev//sdb/": "dev-sdb",
    "/dev/./sdb": "dev-sdb",
    f"/dev/disk/by-uuid/{UUID}":
        "dev-disk-by\\x2duuid-4f6c2a8e\\x2d3c1b\\x2d4d0e\\x2d9a57\\x2d0d1f3c2b1a00",
    "/dev/disk/by-label/my\\x20disk": "dev-disk-by\\x2dlabel-my\\x5cx20disk",
    "/dev/mapper/my-vol.2": "dev-mapper-my\\x2dvol.2",
    "/.dot/x": "\\x2edot-x",
}


@pytest.mark.parametrize(("text", "escaped"), NAME_CASES.items())
def test_escape_name_golden(text, escaped):
    assert gen.escape_name(text) == escaped


@pytest.mark.parametrize(("path", "escaped"), PATH_CASES.items())
def test_escape_path_golden(path, escaped):
    assert gen.escape_path(path) == escaped


def test_escape_path_refuses_relative_and_dotdot():
    with pytest.raises(ValueError):
        gen.escape_path("dev/sdb")
    with pytest.raises(ValueError):
        gen.escape_path("/dev/../sdb")


def test_escaping_matches_systemd_escape():
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape not installed: golden values only")
    names = list(NAME_CASES)
    out = subprocess.run([tool, "--", *names], check=True, capture_output=True,
                         text=True).stdout.split()
    assert [gen.escape_name(n) for n in names] == out
    paths = list(PATH_CASES)
    out = subprocess.run([tool, "--path", "--", *paths], check=True, capture_output=True,
                         text=True).stdout.split()
    assert [gen.escape_path(p) for p in paths] == out


def test_format_timespan():
    assert gen.format_timespan(0) == "infinity"
    assert gen.format_timespan(90) == "90s"
    assert gen.format_timespan(0.5) == "500ms"


# --- golden unit output ----------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_generator_golden(case):
    text = dump(gen.generate(parse_wkdtab(CASES[case])))
    golden = GOLDEN / f"{case}.txt"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(f"# wkdtab:\n# {CASES[case].rstrip().replace(chr(10), chr(10) + '# ')}"
                          f"\n{text}")
    expected = golden.read_text()
    # The golden file starts with the wkdtab as "# " comment lines, then the dump.
    assert text == expected[expected.index("=== "):], f"regenerate with WKD_UPDATE_GOLDEN=1: {case}"


def _unit(case: str, name: str) -> str:
    files = {f.path: f for f in gen.generate(parse_wkdtab(CASES[case]))}
    content = files[gen.unlock_unit_name(name)].content
    assert content is not None
    return content


def test_semantics_behind_the_golden_files():
    """The properties the golden files encode, stated directly."""
    plain = _unit("plain", "data")
    assert "BindsTo=dev-sdb.device\nAfter=dev-sdb.device" in plain
    assert "Before=cryptsetup.target" in plain
    assert "DefaultDependencies=no" in plain and "Conflicts=umount.target" in plain
    assert "ExecStart=/usr/bin/wkd attach 'data'\n" in plain
    assert "ExecStop=/usr/bin/wkd detach 'data'\n" in plain
    assert "dbus" not in plain.lower()  # boot unlocking must not need the bus
    # nofail: no ordering against cryptsetup.target, and only "wants".
    assert "Before=cryptsetup.target" not in _unit("nofail", "data")
    paths = {f.path for f in gen.generate(parse_wkdtab(CASES["nofail"]))}
    assert "cryptsetup.target.wants/wkd-unlock@data.service" in paths
    assert not any(p.startswith("cryptsetup.target.requires") for p in paths)
    # noauto: no target link at all, but the mapper device still pulls the unit in.
    paths = {f.path for f in gen.generate(parse_wkdtab(CASES["noauto"]))}
    assert not any(p.startswith("cryptsetup.target") for p in paths)
    assert "dev-mapper-manual.device.requires/wkd-unlock@manual.service" in paths
    # timeout= bounds both the unit and the device wait.
    assert "TimeoutSec=120s" in _unit("timeout", "slow")
    assert "Before=remote-cryptsetup.target" in _unit("netdev", "remote")
    assert "After=pcscd.socket" in _unit("netdev", "remote")


def test_non_default_wkdtab_is_passed_to_attach():
    files = gen.generate(parse_wkdtab("v /dev/sdb", path="/run/wkdtab"),
                         wkdtab_path="/run/wkdtab")
    content = files[0].content or ""
    assert "ExecStart=/usr/bin/wkd attach 'v' --wkdtab '/run/wkdtab'" in content
    assert "SourcePath=/run/wkdtab" in content


# --- the generator program -------------------------------------------------------------

def test_main_writes_files_and_skips_bad_lines(tmp_path, monkeypatch, capsys):
    table = tmp_path / "wkdtab"
    table.write_text(CASES["multiple"] + "broken /dev/sdx bogus\n")
    monkeypatch.setenv("WKDTAB", str(table))
    out = tmp_path / "normal"
    assert gen.main([str(out), str(tmp_path / "early"), str(tmp_path / "late")]) == 1
    assert "wkdtab:5: unknown option 'bogus'; entry skipped" in capsys.readouterr().err
    assert (out / "wkd-unlock@home.service").is_file()
    link = out / "cryptsetup.target.requires" / "wkd-unlock@home.service"
    assert link.is_symlink() and link.resolve() == (out / "wkd-unlock@home.service").resolve()
    assert not (out / "wkd-unlock@broken.service").exists()
    expected = dump(gen.generate(parse_wkdtab(CASES["multiple"], path=str(table)),
                                 wkdtab_path=str(table)))
    assert dump_dir(out) == expected
    # Generators run again on daemon-reload into a fresh dir; rerunning into the same one
    # must also work.
    assert gen.main([str(out)]) == 1


def test_main_without_wkdtab_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WKDTAB", str(tmp_path / "absent"))
    assert gen.main([str(tmp_path / "n"), str(tmp_path / "e"), str(tmp_path / "l")]) == 0
    assert not (tmp_path / "n").exists()
    assert gen.main([]) == 2


def test_generated_units_pass_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    entries = parse_wkdtab(CASES["multiple"] + CASES["netdev"] + CASES["timeout"])
    # /bin/true stands in for /usr/bin/wkd: verify checks that ExecStart= is executable.
    gen.write_files(gen.generate(entries, binary="/bin/true"), str(tmp_path))
    units = sorted(str(p) for p in tmp_path.glob("wkd-unlock@*.service"))
    assert len(units) == 5
    result = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wkd-unlock" not in result.stderr, result.stderr
