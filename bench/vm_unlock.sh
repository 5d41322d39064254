#!/bin/sh
# Unlock benchmark with real activation, by hand: runs ONLY inside a VM with wkd installed
# (the host kernel has no device-mapper). The measurement is bench/vm_bench.py; the usual way
# to run it is the opt-in system-test scenario, which boots the VM for you:
#
#   python3 -m tests.system.run --bench --only bench          (on the host, as root)
#
# By hand, as root in the guest, with this repository's bench/ next to this script:
#
#   bench/vm_unlock.sh DISK_PEER DISK_WKD DISK_PASS [RUNS] > vm-unlock.json
#
# All three disks are FORMATTED. Guest packages needed beyond wkd's Depends: opensc
# (pkcs11-tool) and openssl (tests/system/guest/packages.txt has them). Then, on the host:
#   .venv/bin/python -m bench.run --vm-json vm-unlock.json --only-vm
set -eu
[ $# -ge 3 ] || { echo "usage: $0 DISK_PEER DISK_WKD DISK_PASS [RUNS]" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m bench.vm_bench "$1" "$2" "$3" \
    --runs "${4:-10}"
