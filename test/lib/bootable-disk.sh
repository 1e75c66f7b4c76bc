#!/usr/bin/env bash
# Builds a small disk that BOOTS, to prove a snapshot boots again:
#   test/lib/bootable-disk.sh OUT.raw MARKER
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
set -euo pipefail
out=$1 marker=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BMSNAP_RAMDISK_CACHE:-/var/cache/bmsnap/ramdisk}
say() { echo "bootable-disk: $*" >&2; }
die() { echo "bootable-disk: $*" >&2; exit 1; }
source "$here/../../ramdisk-build/lib.sh"
fetch_kernel_deb
extract_kernel

work=$(mktemp -d)
loop=
cleanup() {
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT

# the marker OS's initramfs
ir=$work/initrd
mkdir -p "$ir"/{bin,proc,sys,dev,newroot}
cp /bin/busybox "$ir/bin/busybox"
for a in sh mount umount sleep switch_root modprobe cat echo ls; do ln -s busybox "$ir/bin/$a"; done
copy_modules "$ir" virtio_pci virtio_blk ext4 crc32c_generic virtio_net
cat > "$ir/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
modprobe -a virtio_pci virtio_blk crc32c_generic ext4 virtio_net
root=$(for w in $(cat /proc/cmdline); do case $w in root=*) echo "${w#root=}";; esac; done)
for i in $(seq 1 100); do [ -b "$root" ] && break; sleep 0.1; done
mount -t ext4 -o ro "$root" /newroot || { echo "BMSNAP-MARKER-FAIL cannot mount $root"; sleep 2; echo o > /proc/sysrq-trigger; }
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/bmsnap-marker
EOF
chmod 755 "$ir/init"
pack_initramfs "$ir" "$work/initrd.zst" >/dev/null

# the disk
rm -f "$out"
truncate -s 256M "$out"
sgdisk -n1:2048:+1M -t1:ef02 -c1:bios -n2:0:+32M -t2:ef00 -c2:esp -n3:0:0 -t3:8300 -c3:root "$out" >/dev/null
loop=$(losetup -f --show -P "$out")
partx -a "$loop" 2>/dev/null || true
for i in $(seq 1 50); do [ -b "${loop}p2" ] && [ -b "${loop}p3" ] && break; sleep 0.1; done
mkfs.vfat -n ESP "${loop}p2" >/dev/null 2>&1
printf 'bmsnap test ESP %s\n' "$marker" > "$work/esp.txt"
mmd -i "${loop}p2" ::/EFI && mcopy -i "${loop}p2" "$work/esp.txt" ::/EFI/marker.txt
mkfs.ext4 -q -L root "${loop}p3"
mkdir -p "$work/mnt" && mount "${loop}p3" "$work/mnt"
r=$work/mnt
mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,boot/grub}
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
cp "$ktree/boot/vmlinuz-$kver" "$r/boot/vmlinuz"
cp "$work/initrd.zst" "$r/boot/initrd.img"
cat > "$r/boot/grub/grub.cfg" <<'EOF'
set timeout=0
serial --unit=0 --speed=115200
terminal_output serial
linux /boot/vmlinuz console=ttyS0 root=/dev/vda3 panic=-1 quiet
initrd /boot/initrd.img
boot
EOF
grub-install --target=i386-pc --boot-directory="$r/boot" --modules="part_gpt ext2 biosdisk serial" "$loop" 2>&1 \
  | grep -v "warning: " >&2 || true
[ -f "$r/boot/grub/i386-pc/core.img" ] || die "grub-install failed"
sha256sum "$r/etc/bmsnap-payload" | cut -c1-64
cat "$r/etc/machine-id"
