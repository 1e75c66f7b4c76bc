# Sourced first by the guest jobs (test/lib/*-job.sh) that run in the busybox "user OS" of
# test/lib/bootable-disk.sh, with $job set to the job disk's mount point: busybox's applets on
# PATH (from /dev, off the root tree), the job's settings (job.env; OS_TOKEN, if set, exported
# for bmsnap), what a distribution would have brought up (sysfs, a tmpfs on /dev/shm, DHCP on
# eth0) and the console line format the tests wait for.
/bin/busybox mkdir -p /dev/.bin && /bin/busybox --install -s /dev/.bin
export PATH=/dev/.bin
. "$job/job.env"
if [ -n "${OS_TOKEN:-}" ]; then export OS_TOKEN; fi

say() { echo "BMSNAP-JOB $*"; }

# A tmpfs on /dev/shm, as every distribution has (the bundle unpacks there, in RAM).
shm_up() {
  mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
}

os_up() {
  mount -t sysfs sysfs /sys
  printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/${mask:-24}" dev "$interface"\nexit 0\n' > /dev/.dhcp
  chmod 755 /dev/.dhcp
  ip link set lo up && ip link set eth0 up
  udhcpc -i eth0 -q -n -t 10 -s /dev/.dhcp >/dev/null 2>&1 || say "dhcp failed"
  say "network $(ip -o -4 addr show dev eth0 | awk '{print $4}')"
}
