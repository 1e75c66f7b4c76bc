#!/bin/busybox sh
# The guest half of test/e2e/inband-live.test.ts, run by the marker of the --lvm test disk
# (root on LVM) from the job disk mounted at $1; job.env sets GLANCE_URL, IMAGE_NAME, OS_TOKEN,
# FILE_DATA. Brings the "user OS" up (sysfs, /dev/shm, DHCP, /boot and the ESP mounted
# read-write), meets one real refusal, writes FILE_DATA before the snapshot, then runs
# `bmsnap now --mode live` while
#  - a writer churns the root: 1 MiB files /var/churn/f.N, each holding only lines "N", written
#    under a temporary name with fsync (so the data really reaches the disk, where the snapshot
#    must copy the old chunks away) and renamed, the oldest removed, as fast as it can;
#  - as soon as the snapshot exists, a write to /boot (a plain partition, held still for the
#    capture) that has to wait for the end of it;
# then a second capture as a delta on the first (--parent), and once more with a copy-on-write
# store too small for the writer (--cow-device /dev/vdc).
# Console lines start with BMSNAP-JOB.
job=$1
. "$job/guest-lib.sh"
up() { cut -d' ' -f1 /proc/uptime; }

shm_up
os_up
# (/boot/efi as a distribution has it: a directory on the /boot filesystem)
mount -t ext4 /dev/vda3 /boot && mkdir -p /boot/efi && mount -t vfat /dev/vda2 /boot/efi
say "mounted $(grep -c ' /boot' /proc/mounts) boot filesystems; root on $(grep ' / ' /proc/mounts | cut -d' ' -f1)"

# a refusal the node can really produce: a copy-on-write device on the disk being imaged
"$job/bmsnap" now --mode live --glance "$IMAGE_NAME" --glance-url "$GLANCE_URL" --cow-device /dev/vda2 > /dev/null 2> /dev/shm/refusal.err
say "refusal rc=$? err=$(head -n 1 /dev/shm/refusal.err)"

echo "$FILE_DATA" > /opt/app/before-snapshot
echo "$FILE_DATA" > /boot/before-snapshot
sync

mkdir -p /var/churn
( i=0
  while [ ! -f /dev/shm/stop ]; do
    i=$((i + 1))
    yes "$i" | head -c 1048576 | dd of=/var/churn/.next bs=64k conv=fsync 2>/dev/null && mv /var/churn/.next /var/churn/f.$i
    [ $i -gt 8 ] && rm -f /var/churn/f.$((i - 8))
    echo $i > /dev/shm/count
  done ) &
writer=$!
( while ! ls /dev/mapper 2>/dev/null | grep -q 'bmsnap-live-.*-snap'; do sleep 0.2; done
  up > /dev/shm/boot-try
  echo during > /boot/during-snapshot && sync
  up > /dev/shm/boot-done ) &
sleep 5
before=$(cat /dev/shm/count)
t0=$(up)
"$job/bmsnap" now --mode live --glance "$IMAGE_NAME" --glance-url "$GLANCE_URL" > /dev/shm/id 2> /dev/shm/live.err
rc=$?
t1=$(up)
after=$(cat /dev/shm/count)
sleep 2
grep '^bmsnap: ' /dev/shm/live.err | while read -r l; do say "said $l"; done
say "live rc=$rc id=$(cat /dev/shm/id) writes-before=$before writes-after=$after writes-end=$(cat /dev/shm/count) started=$t0 ended=$t1"
[ $rc -eq 0 ] || tail -n 5 /dev/shm/live.err

# the next snapshot as a delta on that one (the writer still churning): only what changed
"$job/bmsnap" now --mode live --glance "$IMAGE_NAME-delta" --glance-url "$GLANCE_URL" --parent "$(cat /dev/shm/id)" > /dev/shm/id3 2> /dev/shm/delta.err
say "delta rc=$? id=$(cat /dev/shm/id3) last=$(tail -n 1 /dev/shm/delta.err)"

# again, with a spare disk far too small for what the writer writes meanwhile (/dev/vdc, 2 MiB):
# the store fills up, the snapshot turns invalid, the capture fails cleanly
"$job/bmsnap" now --mode live --glance "$IMAGE_NAME-overflow" --glance-url "$GLANCE_URL" --cow-device /dev/vdc > /dev/shm/id2 2> /dev/shm/live2.err
say "overflow rc=$? last=$(tail -n 1 /dev/shm/live2.err)"
touch /dev/shm/stop
wait $writer
say "boot write tried=$(cat /dev/shm/boot-try 2>&1) done=$(cat /dev/shm/boot-done 2>&1)"
say "mapper [$(ls /dev/mapper | tr '\n' ' ')] loops [$(grep -l . /sys/block/loop*/loop/backing_file 2>/dev/null | tr '\n' ' ')]"
touch /boot/after-snapshot /boot/efi/after.txt && say "boot filesystems writable again"
grep ' /boot' /proc/mounts | while read -r l; do say "mount $l"; done
umount /boot/efi /boot
say done
