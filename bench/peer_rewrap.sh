#!/bin/sh
# The "admin script" peer of RewrapAll: re-wrap the volume key of each wkd volume from one KEK
# to another with the stock tools an administrator has (OpenSC pkcs11-tool 0.23, cryptsetup,
# jq, base64), one volume at a time.
#
#   peer_rewrap.sh FROM_KEK_ID TO_KEK_LABEL TO_KEK_ID IMAGE...
#   environment: PKCS11_MODULE, TOKEN_LABEL, PIN_FILE (and SOFTHSM2_CONF for SoftHSM2)
#
# Per volume: read the wkd token from the LUKS2 JSON metadata; unwrap the volume key with the
# old KEK (CKM_AES_KEY_WRAP_PAD = 0x210A, RFC 5649) into a *token* object (each pkcs11-tool
# run is its own PKCS#11 session, so a session object would not survive to the next step),
# marked sensitive so its value is never printed; wrap it under the new KEK; delete the
# temporary object; import the new token (generation + 1); remove the old one.
#
# What it does NOT do, compared with wkd: no check of the re-wrapped key against the LUKS2
# digest before the old token goes, no per-volume lock, no crash recovery, and the PIN is on
# pkcs11-tool's command line (visible in ps). It is the cheapest honest shell route.
set -eu
from_id=$1 to_label=$2 to_id=$3
shift 3
pin=$(cat "$PIN_FILE")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
p11() { pkcs11-tool --module "$PKCS11_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$pin" "$@" >/dev/null; }
for img in "$@"; do
    cryptsetup luksDump --dump-json-metadata "$img" \
        | jq -c '.tokens | to_entries[] | select(.value.type == "wkd") | .key, .value' \
        > "$tmp/tok"
    tid=$(sed -n 1p "$tmp/tok" | tr -d '"')
    sed -n 2p "$tmp/tok" > "$tmp/old.json"
    jq -r .wrapped_key "$tmp/old.json" | base64 -d > "$tmp/old.bin"
    p11 --unwrap -m 0x210A --id "$from_id" -i "$tmp/old.bin" --key-type GENERIC: \
        --sensitive --extractable --application-id ffff --application-label wkd-bench-tmp
    p11 --wrap -m 0x210A --id "$to_id" --application-id ffff -o "$tmp/new.bin"
    p11 --delete-object --type secrkey --id ffff
    jq -c --arg l "$to_label" --arg i "$to_id" --arg w "$(base64 -w0 "$tmp/new.bin")" \
        '.kek_label = $l | .kek_id = $i | .wrapped_key = $w | .generation += 1
         | .state = "active"' "$tmp/old.json" \
        | cryptsetup token import "$img"
    cryptsetup token remove --token-id "$tid" "$img"
done
