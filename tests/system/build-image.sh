#!/bin/bash
# Build the bookworm guest image for the system-test tier.
#
# Usage: build-image.sh OUTDIR
# Produces OUTDIR/rootfs.img (raw ext4, the base every run overlays with qcow2),
# OUTDIR/vmlinuz and OUTDIR/initrd.img.  Runs as root (mmdebstrap --mode=root).
#
# The image carries wkd's runtime dependencies but NOT wkd itself: the .deb under test is
# installed by the guest runner at the first boot of each run (see guest/runner.py), so a
# code change never needs an image rebuild.  The cache key (tests/system/image.py) hashes
# this script, the package list file and the guest unit, so editing any of them rebuilds.
set -euo pipefail

out=$(realpath -m "${1:?usage: build-image.sh OUTDIR}")
here=$(cd "$(dirname "$0")" && pwd)
mirror=${WKD_TEST_MIRROR:-http://deb.debian.org/debian}
packages=$(grep -v '^#' "$here/guest/packages.txt" | tr -s ' \n' ',' | sed 's/^,//;s/,$//')

mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

# MODULES=list keeps the initramfs at ~6 MB: the guest only needs virtio + ext4 to find
# its root (the image is booted with -kernel/-initrd, no bootloader).  Written before the
# kernel package is unpacked so the first (and only) initramfs build is the small one.
setup_hook='mkdir -p "$1/etc/initramfs-tools/conf.d" &&
  printf "MODULES=list\nCOMPRESS=zstd\n" > "$1/etc/initramfs-tools/conf.d/wkdtest.conf"'

customize_hook='set -e
  printf "virtio_pci\nvirtio_blk\next4\n9p\n9pnet_virtio\n" >> "$1/etc/initramfs-tools/modules"
  chroot "$1" update-initramfs -u -k all
  echo wkdtest > "$1/etc/hostname"
  printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\n" > "$1/etc/fstab"
  # An unprivileged account for the authorization scenario.
  chroot "$1" useradd --create-home --shell /bin/bash wkdtest
  # A getty on the serial console garbles the log we keep; timers only burn emulated CPU.
  for u in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer \
           apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
           man-db.timer dpkg-db-backup.timer systemd-timesyncd.service; do
    ln -sf /dev/null "$1/etc/systemd/system/$u"
  done
  install -m 0644 "'"$here"'/guest/wkd-test-runner.service" "$1/etc/systemd/system/"
  mkdir -p "$1/etc/systemd/system/multi-user.target.wants" "$1/mnt/share"
  ln -sf ../wkd-test-runner.service "$1/etc/systemd/system/multi-user.target.wants/"
  mkdir -p "$1/etc/systemd/journald.conf.d"
  printf "[Journal]\nStorage=persistent\n" > "$1/etc/systemd/journald.conf.d/wkdtest.conf"
  passwd --root "$1" --delete root
  rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*_Packages
  cp "$1"/boot/vmlinuz-* "'"$work"'/vmlinuz"
  cp "$1"/boot/initrd.img-* "'"$work"'/initrd.img"
'

mmdebstrap --variant=apt --mode=root --include="$packages" \
  --setup-hook="$setup_hook" --customize-hook="$customize_hook" \
  bookworm "$root" "$mirror"

rm -f "$work/rootfs.img"
mke2fs -q -t ext4 -L wkdroot -d "$root" "$work/rootfs.img" 2G
mv "$work/vmlinuz" "$work/initrd.img" "$work/rootfs.img" "$out/"
echo "image ready in $out"
