#!/bin/sh
# Unlock benchmark with real activation: runs ONLY inside the system-test VM (tests/system/),
# never on the host (the host kernel has no device-mapper). As root, in the guest:
#
#   bench/vm_unlock.sh DISK_PEER DISK_WKD [RUNS] > vm-unlock.json
#
# DISK_PEER and DISK_WKD are two spare disks (e.g. the serial-named virtio disks of a
# scenario); both are FORMATTED. wkd.service must be installed and running on the system bus.
# Guest packages needed beyond tests/system/guest/packages.txt: opensc (pkcs11-tool), openssl,
# p11-kit (systemd-cryptenroll/-cryptsetup reach SoftHSM2 through p11-kit's module list).
#
# Peer: systemd's own PKCS#11 route. A SoftHSM2 token holds an RSA key and certificate;
# systemd-cryptenroll --pkcs11-token-uri=pkcs11:token=<label> encrypts a random secret to it
# and adds a keyslot for that secret (minimal PBKDF, as systemd does for token keyslots);
# `systemd-cryptsetup attach` asks the token to decrypt the secret and activates.
# (The URI names the token explicitly: `list`/`auto` fail because SoftHSM2 always shows an
# uninitialized extra slot.)
#
# wkd: Unlock over D-Bus (busctl, real dm-crypt activation through the kernel keyring), and
# the boot path without D-Bus (`wkd attach NAME --wkdtab FILE`, a one-shot process like
# systemd-cryptsetup). Each run: peer attach, detach; wkd Unlock, Lock; wkd attach, detach —
# interleaved so a slow stretch of the (emulated, 2-core) VM hits all three alike.
#
# Output: one JSON object with the samples in seconds; on the host,
#   .venv/bin/python -m bench.run --vm-json vm-unlock.json --only-vm
# adds them to the table with ratios.
set -eu
peer_disk=$1 wkd_disk=$2 runs=${3:-5}
[ "$(id -u)" -eq 0 ] || { echo "vm_unlock.sh: run as root" >&2; exit 2; }
[ -e /dev/mapper/control ] || modprobe dm_crypt
for tool in systemd-cryptenroll pkcs11-tool openssl softhsm2-util busctl wkd; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/lib/systemd/$tool" ] || {
        echo "vm_unlock.sh: $tool is missing (see the package list above)" >&2; exit 2; }
done
cryptsetup_bin=/lib/systemd/systemd-cryptsetup
[ -x "$cryptsetup_bin" ] || cryptsetup_bin=/usr/lib/systemd/systemd-cryptsetup

work=$(mktemp -d /run/wkd-vm-bench.XXXXXX)
trap 'detach_all; rm -rf "$work"' EXIT
detach_all() {
    "$cryptsetup_bin" detach bench-peer 2>/dev/null || true
    wkd detach bench-wkd 2>/dev/null || true
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }

# --- the peer's token: SoftHSM2 with an RSA key + self-signed certificate --------------------
export SOFTHSM2_CONF="$work/softhsm2.conf"
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\n' "$work/tokens" > "$SOFTHSM2_CONF"
label=bench-peer
pin=123456
softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin 12345678 >/dev/null
module=/usr/lib/softhsm/libsofthsm2.so
[ -e "$module" ] || module=$(find /usr/lib -name libsofthsm2.so | head -n1)
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=wkd-bench -days 2 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$work/key.pem" -outform DER -out "$work/key.der"
openssl x509 -in "$work/cert.pem" -outform DER -out "$work/cert.der"
p11() { pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" "$@" >/dev/null; }
p11 --write-object "$work/key.der" --type privkey --id 01 --label bench --usage-decrypt
p11 --write-object "$work/cert.der" --type cert --id 01 --label bench

# --- the peer's volume: passphrase keyslot (cheap PBKDF), then the PKCS#11 enrollment --------
head -c 32 /dev/urandom | base64 > "$work/pass"
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$work/pass" "$peer_disk"
PIN=$pin PASSWORD=$(cat "$work/pass") systemd-cryptenroll \
    --pkcs11-token-uri="pkcs11:token=$label" "$peer_disk" >/dev/null
# Leave only the PKCS#11 keyslot (slot 1): attach must go through the token.
cryptsetup luksKillSlot --batch-mode --key-file "$work/pass" "$peer_disk" 0

# --- wkd's volume ----------------------------------------------------------------------------
systemctl start wkd.service
busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Format 'ssa{sv}' "$wkd_disk" "" 1 force b true \
    >/dev/null
printf 'bench-wkd %s - -\n' "$wkd_disk" > "$work/wkdtab"

peer_s="" dbus_s="" attach_s=""
i=0
while [ "$i" -lt "$runs" ]; do
    t0=$(now)
    PIN=$pin "$cryptsetup_bin" attach bench-peer "$peer_disk" none \
        "pkcs11-uri=pkcs11:token=$label,headless=true"
    t1=$(now)
    "$cryptsetup_bin" detach bench-peer
    peer_s="$peer_s${peer_s:+,}$(elapsed "$t0" "$t1")"

    t0=$(now)
    busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Unlock 'sa{sv}' "$wkd_disk" 1 name s \
        bench-wkd >/dev/null
    t1=$(now)
    busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Lock 'sa{sv}' "$wkd_disk" 0 >/dev/null
    dbus_s="$dbus_s${dbus_s:+,}$(elapsed "$t0" "$t1")"

    # The boot path opens the daemon's token itself: stop the daemon so the two never share
    # one SoftHSM2 token directory (as at boot, where the daemon is not up yet).
    systemctl stop wkd.service
    t0=$(now)
    wkd attach bench-wkd --wkdtab "$work/wkdtab"
    t1=$(now)
    wkd detach bench-wkd
    attach_s="$attach_s${attach_s:+,}$(elapsed "$t0" "$t1")"
    systemctl start wkd.service
    i=$((i + 1))
done

printf '{"runs": %s, "systemd_cryptsetup_attach_s": [%s], "wkd_unlock_dbus_s": [%s], ' \
    "$runs" "$peer_s" "$dbus_s"
printf '"wkd_attach_s": [%s], "kernel": "%s"}\n' "$attach_s" "$(uname -r)"
