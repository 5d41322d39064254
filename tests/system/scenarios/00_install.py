"""Install the freshly built wkd .deb with dpkg and check what it put on the system."""
# wkd-test: boot=1 timeout=180
from pathlib import Path

from wkdtest import SHARE, Scenario

with Scenario() as t:
    proc = t.run("dpkg", "-i", str(SHARE / "wkd.deb"), check=False, timeout=170)
    t.require("dpkg -i wkd.deb succeeds (all Depends present in the image)",
              proc.returncode == 0, proc.stderr[-1500:])
    status = t.run("dpkg-query", "-W", "-f=${Status}", "wkd").stdout
    t.check("package state is 'install ok installed'", status == "install ok installed", status)
    for path in ("/usr/bin/wkd", "/usr/bin/wkdctl",
                 "/usr/lib/python3/dist-packages/wkd/__init__.py",
                 "/usr/lib/wkd/vendor/dbus_fast/__init__.py",
                 "/usr/lib/wkd/vendor/pkcs11/__init__.py",
                 "/usr/lib/systemd/system/wkd.service",
                 "/usr/share/dbus-1/system.d/org.wkd1.conf",
                 "/usr/share/dbus-1/system-services/org.wkd1.service",
                 "/usr/share/polkit-1/actions/org.wkd1.policy"):
        t.check(f"installed {path}", Path(path).exists())
    proc = t.run("wkdctl", "--help", check=False)
    t.check("wkdctl runs with the vendored libraries", proc.returncode == 0,
            proc.stderr[-800:])
    proc = t.run("python3", "-I", "-c",
                 "import sys; sys.path.insert(0, '/usr/lib/wkd/vendor');"
                 "import dbus_fast, pkcs11, pyudev, cryptography, systemd.journal;"
                 "import wkd.system.daemon, wkd.bus.service",
                 check=False)
    t.check("every runtime import resolves", proc.returncode == 0, proc.stderr[-800:])
    units = [str(p) for p in Path("/usr/lib/systemd/system").glob("wkd*")]
    if units:
        proc = t.run("systemd-analyze", "verify", "--man=no", *units, check=False)
        t.check("systemd-analyze verify is clean for the installed units",
                proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-1500:])
    # The exposure score systemd computes for the installed, loaded unit (docs/boot.md
    # records it; the host's offline score is checked by tests/unit/test_units.py).
    t.run("systemctl", "daemon-reload", check=False)
    proc = t.run("systemd-analyze", "security", "--no-pager", "wkd.service", check=False)
    score_line = next((line for line in proc.stdout.splitlines()
                       if "Overall exposure level" in line), "")
    try:
        score = float(score_line.split(":")[1].split()[0])
    except (IndexError, ValueError):
        score = 99.0
    t.check("systemd-analyze security scores wkd.service at most 2.0 (low exposure)",
            score <= 2.0, score_line.strip() or proc.stdout[-800:])
