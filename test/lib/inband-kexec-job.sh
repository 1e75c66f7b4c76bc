#!/bin/busybox sh
# The guest half of test/e2e/inband-kexec.test.ts, run by the bootable test disk's marker from
# the job disk mounted at $1 (/dev/job); job.env there sets GLANCE_URL, FAULT_URL (a proxy to
# that Glance failing every upload), IMAGE_NAME, OS_TOKEN and FILE_DATA. The "user OS" is busybox
# alone; the job brings up what a distribution would (a tmpfs on /dev/shm, sysfs, DHCP).
# Console lines start with BMSNAP-JOB. By the bmsnap.result on the kernel command line:
#  - none (first boot): one real refusal (sysfs not mounted yet: no /sys/kernel/kexec_loaded),
#    then write /opt/app/before-snapshot and run `bmsnap now --mode kexec` into GLANCE_URL;
#  - ok:ID (back from it): print it and the file, then `bmsnap now --mode kexec --parent ID`
#    (a delta on the first image) into FAULT_URL, where the upload fails;
#  - failed:WHY (back from that): print it and let the marker power off.
# `bmsnap now` does not return when it works: the node goes down into the ramdisk.
job=$1
. "$job/guest-lib.sh"
now() {   # NAME URL [more options]
  say "handover starting ($1)"
  name=$1 url=$2; shift 2
  "$job/bmsnap" now --mode kexec --glance "$name" --glance-url "$url" "$@" > /dev/shm/now.out
  say "now returned rc=$? out=$(cat /dev/shm/now.out)"
  say done
}

shm_up
result=$(for w in $(cat /proc/cmdline); do case $w in bmsnap.result=*) echo "${w#bmsnap.result=}";; esac; done)
case $result in
  ok:*)
    say "result $result"
    say "back file=$(cat /opt/app/before-snapshot 2>&1) cmdline=[$(cat /proc/cmdline)]"
    os_up
    now "$IMAGE_NAME-fail" "$FAULT_URL" --parent "${result#ok:}" ;;
  failed:*)
    say "second result $result"
    say done ;;
  *)
    # a refusal the node can really produce: no sysfs, so no /sys/kernel/kexec_loaded
    "$job/bmsnap" now --mode kexec --glance "$IMAGE_NAME" --glance-url "$GLANCE_URL" > /dev/null 2> /dev/shm/refusal.err
    say "refusal rc=$? err=$(head -n 1 /dev/shm/refusal.err)"
    os_up
    echo "$FILE_DATA" > /opt/app/before-snapshot
    sync
    now "$IMAGE_NAME" "$GLANCE_URL" ;;
esac
