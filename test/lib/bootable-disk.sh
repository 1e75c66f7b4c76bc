#!/usr/bin/env bash
# Builds a small disk that BOOTS, to prove a snapshot boots again:
#   test/lib/bootable-disk.sh OUT.raw MARKER [--lvm]
# GPT: 1 MiB BIOS boot partition (GRUB's core image), a 32 MiB ESP (vfat, with a file written
# by mtools), and an ext4 root holding the Debian kernel the ramdisk uses, a tiny initramfs
# (busybox + virtio/ext4 modules) that mounts the root read-only and switch_roots into its
# /sbin/bmsnap-marker, which prints "BMSNAP-MARKER <MARKER> <sha256 of /etc/bmsnap-payload>"
# and its machine id on the serial console and powers off. The root also holds per-machine state
# (SSH host keys, machine-id, logs, shell history, cloud-init instance, DHCP lease, /tmp) for the
# scrub test, and a package database (/var/lib/dpkg/status). With a second disk (ext4) that holds
# a job.sh attached, the marker runs that job before powering off (test/e2e/bundle-footprint.test.ts;
# virtio_net is loaded for it). Prints the payload hash, then the machine id. GRUB (i386-pc) is
# installed on the loop device, so SeaBIOS boots the disk like a server's firmware would. Needs
# root (loop device, ext4 mount).
#
# --lvm: the layout of a server whose root is a logical volume (for the live-snapshot test),
# 384 MiB: BIOS boot, the same ESP, p3 a 64 MiB ext4 "boot" holding /vmlinuz, /initrd.img and
# /grub, p4 an LVM PV with VG bmsnapvg and LV root (80% of the VG: free extents stay for
# snapshots) holding the same root tree minus the kernel and GRUB, plus empty /boot and /boot/efi
# for the job to mount. The initramfs also carries the host's lvm and activates the VG itself (no
# udev: lvm makes the /dev/mapper nodes), and it loads dm_snapshot, loop and vfat for the running
# OS: the root has no modules of its own. A third line on stdout, "lv-offset=BYTES lv-size=BYTES",
# says where the LV lies in the whole image (as test/lib/lvm-image.sh reads it from the metadata).
# The metadata is written by the host's lvm confined to this disk's PV, without device-mapper (the
# host kernel may have none) and without leaving anything behind (no backups, hints, devices file
# or lock dir of the host's).
set -euo pipefail
out=$1 marker=$2 layout=plain
case ${3:-} in
  '') ;;
  --lvm) layout=lvm ;;
  *) echo "usage: $0 OUT.raw MARKER [--lvm]" >&2; exit 2 ;;
esac
vg=bmsnapvg lv=root
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BMSNAP_RAMDISK_CACHE:-/var/cache/bmsnap/ramdisk}
say() { echo "bootable-disk: $*" >&2; }
die() { echo "bootable-disk: $*" >&2; exit 1; }
source "$here/../../ramdisk-build/lib.sh"
# grub-install asks udevadm for a partition's sysfs entry (its start sector); without it, on a
# loop device, it fails with "cannot find a GRUB drive for /dev/loopNp3" (a fresh host has no udev).
ensure_packages udev grub-pc-bin grub2-common gdisk dosfstools mtools e2fsprogs
command -v udevadm >/dev/null || die "udevadm not found (Debian package udev): grub-install needs it"
fetch_kernel_deb
extract_kernel

work=$(mktemp -d)
loop= lvloop= pvid=
cleanup() {
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  mountpoint -q "$work/bootfs" && umount "$work/bootfs"
  [ -n "$lvloop" ] && losetup -d "$lvloop"
  [ -n "$loop" ] && losetup -d "$loop"
  # On a host with udev, its lvm rules record the PV as online (pvscan --cache); forget it.
  [ -n "$pvid" ] && rm -f "/run/lvm/pvs_online/$pvid"
  rm -rf "$work"
}
trap cleanup EXIT

# the marker OS's initramfs
ir=$work/initrd
mkdir -p "$ir"/{bin,proc,sys,dev,newroot}
cp /bin/busybox "$ir/bin/busybox"
for a in sh mount umount sleep switch_root modprobe cat echo ls; do ln -s busybox "$ir/bin/$a"; done
# With --lvm, also what the running OS needs (it has no modules of its own): dm and loop for live
# snapshots with dmsetup, vfat for the ESP with this kernel's FAT defaults (codepage 437, iocharset
# ascii). And lvm itself, with its libraries.
os_modules="dm_mod dm_snapshot loop vfat nls_cp437 nls_iso8859_1 nls_ascii"
if [ "$layout" = lvm ]; then
  cp /usr/sbin/lvm "$ir/bin/lvm"
  for l in $(libs_of /usr/sbin/lvm); do mkdir -p "$ir$(dirname "$l")" && cp -L "$l" "$ir$l"; done
else
  os_modules=
fi
copy_modules "$ir" virtio_pci virtio_blk ext4 crc32c_generic virtio_net $os_modules
{
  cat <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
modprobe -a virtio_pci virtio_blk crc32c_generic ext4 virtio_net
EOF
  # No udev in here: lvm must create the /dev/mapper nodes itself. The PV's disk may still be
  # appearing, hence the retries.
  if [ "$layout" = lvm ]; then cat <<EOF
modprobe -a $os_modules
mkdir -p /run/lock/lvm
for i in \$(seq 1 50); do
  lvm vgchange -ay --config 'activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0} global{locking_dir="/run/lock/lvm" use_lvmpolld=0} backup{backup=0 archive=0}' $vg >/dev/null 2>/run/vgchange.err && [ -b /dev/mapper/$vg-$lv ] && break
  sleep 0.1
done
[ -b /dev/mapper/$vg-$lv ] || cat /run/vgchange.err
EOF
  fi
  cat <<'EOF'
root=$(for w in $(cat /proc/cmdline); do case $w in root=*) echo "${w#root=}";; esac; done)
for i in $(seq 1 100); do [ -b "$root" ] && break; sleep 0.1; done
mount -t ext4 -o ro "$root" /newroot || { echo "BMSNAP-MARKER-FAIL cannot mount $root"; sleep 2; echo o > /proc/sysrq-trigger; }
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/bmsnap-marker
EOF
} > "$ir/init"
chmod 755 "$ir/init"
pack_initramfs "$ir" "$work/initrd.zst" >/dev/null

# the disk
if [ "$layout" = lvm ]; then
  size=384M last=4 rest=(-n3:0:+64M -t3:8300 -c3:boot -n4:0:0 -t4:8e00 -c4:lvm)
else
  size=256M last=3 rest=(-n3:0:0 -t3:8300 -c3:root)
fi
rm -f "$out"
truncate -s $size "$out"
sgdisk -n1:2048:+1M -t1:ef02 -c1:bios -n2:0:+32M -t2:ef00 -c2:esp "${rest[@]}" "$out" >/dev/null
loop=$(losetup -f --show -P "$out")
partx -a "$loop" 2>/dev/null || true
# The partition nodes come from the kernel (-P) or partx, and udev may still be replacing them
# (a fresh host's first loop device): wait until udev is done and every node answers with its size.
settle() { command -v udevadm >/dev/null && udevadm settle --timeout=10 2>/dev/null || true; }
nodes_ready() {
  local i
  for i in $(seq 1 "$last"); do
    [ -b "${loop}p$i" ] && [ "$(blockdev --getsize64 "${loop}p$i" 2>/dev/null || echo 0)" -gt 0 ] || return 1
  done
}
settle
for i in $(seq 1 100); do nodes_ready && break; partx -u "$loop" 2>/dev/null || true; sleep 0.1; done
nodes_ready || die "partition nodes ${loop}p1..p$last did not appear (losetup -P, partx -a)"
mkfs.vfat -n ESP "${loop}p2" >/dev/null 2>&1
printf 'bmsnap test ESP %s\n' "$marker" > "$work/esp.txt"
mmd -i "${loop}p2" ::/EFI && mcopy -i "${loop}p2" "$work/esp.txt" ::/EFI/marker.txt
if [ "$layout" = lvm ]; then
  # The host's lvm sees p4 alone (filters), needs no device-mapper (activation=0: the LV is
  # created inactive and not zeroed) and writes nothing of its own: no metadata backups, no
  # hints, no devices file, no lock dir. Not autoactivated (a host with udev and dm would
  # otherwise activate it while we write it); the guest's /init activates it explicitly.
  pv=${loop}p4
  lvmconf="devices{filter=[\"a|^$pv\$|\",\"r|.*|\"] global_filter=[\"a|^$pv\$|\",\"r|.*|\"] use_devicesfile=0 hints=\"none\" obtain_device_list_from_udev=0}
    global{activation=0 event_activation=0 use_lvmpolld=0} backup{backup=0 archive=0}
    activation{udev_sync=0 udev_rules=0 monitoring=0}"
  host_lvm() {   # (quiet unless it fails: every command warns that activation is disabled)
    LVM_SUPPRESS_FD_WARNINGS=1 lvm "$1" --nolocking --config "$lvmconf" "${@:2}" 2>"$work/lvm.err" || { cat "$work/lvm.err" >&2; die "lvm $1 failed"; }
  }
  host_lvm pvcreate "$pv" >/dev/null
  pvid=$(host_lvm pvs --noheadings -o pv_uuid "$pv" | tr -d ' -')
  host_lvm vgcreate --setautoactivation n "$vg" "$pv" >/dev/null
  host_lvm lvcreate -an -Zn -Wn -l 80%VG -n "$lv" "$vg" >/dev/null
  # the root file system goes straight into the LV's extents, found the way a test finds them
  read -r lv_off lv_size < <(bash "$here/lvm-image.sh" "$out" "$vg" "$lv") || die "cannot locate $vg/$lv in $out"
  lvloop=$(losetup -f --show -o "$lv_off" --sizelimit "$lv_size" "$out")
  rootdev=$lvloop bootdir=$work/bootfs kdir= rootarg=/dev/mapper/$vg-$lv
  mkfs.ext4 -q -L boot "${loop}p3"
  mkdir -p "$bootdir" && mount "${loop}p3" "$bootdir"
else
  rootdev=${loop}p3 bootdir=$work/mnt/boot kdir=/boot rootarg=/dev/vda3
fi
mkfs.ext4 -q -L root "$rootdev"
mkdir -p "$work/mnt" && mount "$rootdev" "$work/mnt"
r=$work/mnt
mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev} "$bootdir/grub"
# (mount points: the live-snapshot job mounts p3 and the ESP itself)
if [ "$layout" = lvm ]; then mkdir -p "$r/boot/efi"; fi
cp /bin/busybox "$r/bin/busybox"
ln -s busybox "$r/bin/sh"
# some content worth copying: 8 MiB of pseudo-random bytes whose hash the marker prints
head -c 8M /dev/urandom > "$r/etc/bmsnap-payload"
echo "$marker" > "$r/etc/bmsnap-marker"
# per-machine state, as a used server has it (what scrub must remove from an image)
mkdir -p "$r"/etc/ssh "$r"/root "$r"/var/log "$r"/var/lib/cloud/instances/i-0001 "$r"/var/lib/dhcp "$r"/tmp "$r"/opt/app
cat /proc/sys/kernel/random/uuid | tr -d '-' > "$r/etc/machine-id"
echo "test host key $marker" > "$r/etc/ssh/ssh_host_ed25519_key"
echo "ssh-ed25519 AAAA-test-$marker" > "$r/etc/ssh/ssh_host_ed25519_key.pub"
echo "Port 22" > "$r/etc/ssh/sshd_config"
printf 'ls\nexport TOKEN=hunter2\n' > "$r/root/.bash_history"
printf 'Nov 23 boot\nNov 23 login root\n' > "$r/var/log/syslog"
echo old > "$r/var/log/syslog.1"
echo "{}" > "$r/var/lib/cloud/instances/i-0001/obj.pkl"
ln -s /var/lib/cloud/instances/i-0001 "$r/var/lib/cloud/instance"
echo "lease { }" > "$r/var/lib/dhcp/dhclient.eth0.leases"
echo junk > "$r/tmp/build.log"
echo "API_KEY=abc" > "$r/opt/app/secrets.env"
echo "keep me" > "$r/opt/app/config"
# the package database of this "distribution" (what a footprint check compares)
mkdir -p "$r/var/lib/dpkg"
printf 'Package: %s\nStatus: install ok installed\nArchitecture: amd64\nVersion: %s\n\n' \
  busybox 1:1.35.0 bmsnap-marker 1.0 > "$r/var/lib/dpkg/status"
# The "OS": prints the marker, the payload hash and its identity. Like systemd and sshd-keygen on
# a real distribution, it makes a new machine id / host key at boot when they are missing.
cat > "$r/sbin/bmsnap-marker" <<'EOF'
#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -o remount,rw /
fresh=
if [ ! -s /etc/machine-id ]; then $b cat /proc/sys/kernel/random/uuid | $b tr -d '-' > /etc/machine-id; fresh="$fresh machine-id"; fi
if [ ! -f /etc/ssh/ssh_host_ed25519_key ]; then echo "regenerated" > /etc/ssh/ssh_host_ed25519_key; fresh="$fresh hostkey"; fi
echo "BMSNAP-MARKER $($b cat /etc/bmsnap-marker) $($b sha256sum /etc/bmsnap-payload | $b cut -c1-64) machine-id=$($b cat /etc/machine-id) regenerated=[${fresh# }]"
# a second disk holding job.sh: run that job (mounted at /dev/job, off the root tree), then power off
if [ -b /dev/vdb ] && $b mkdir -p /dev/job && $b mount -t ext4 /dev/vdb /dev/job 2>/dev/null; then
  [ -f /dev/job/job.sh ] && $b sh /dev/job/job.sh /dev/job
  $b sync; $b umount /dev/job
fi
$b sync
$b poweroff -f
EOF
chmod 755 "$r/sbin/bmsnap-marker"
cp "$ktree/boot/vmlinuz-$kver" "$bootdir/vmlinuz"
cp "$work/initrd.zst" "$bootdir/initrd.img"
cat > "$bootdir/grub/grub.cfg" <<EOF
set timeout=0
serial --unit=0 --speed=115200
terminal_output serial
linux $kdir/vmlinuz console=ttyS0 root=$rootarg panic=-1 quiet
initrd $kdir/initrd.img
boot
EOF
# grub-install maps the boot partition to a BIOS drive; its own probe of a loop device can fail
# on a fresh host ("cannot find a GRUB drive for /dev/loop0p3"), so it gets an explicit device map.
printf '(hd0) %s\n' "$loop" > "$bootdir/grub/device.map"
settle
if ! gi_out=$(grub-install --target=i386-pc --boot-directory="$bootdir" --modules="part_gpt ext2 biosdisk serial" "$loop" 2>&1) \
  || [ ! -f "$bootdir/grub/i386-pc/core.img" ]; then
  die "grub-install on $loop failed: $(printf '%s\n' "$gi_out" | grep -v 'warning: ' | grep . | tail -n 1)"
fi
sha256sum "$r/etc/bmsnap-payload" | cut -c1-64
cat "$r/etc/machine-id"
if [ "$layout" = lvm ]; then echo "lv-offset=$lv_off lv-size=$lv_size"; fi
