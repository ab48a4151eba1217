#!/bin/sh
# /init of the testbed VM (testbed/src/vm.rs), run by busybox sh as PID 1.
#
# ttyS0 is the kernel console (kept in <cache>/logs/<name>.console.log).
# ttyS1 carries only the result, in raw mode, framed with byte counts so the
# host parses it exactly whatever the kernel prints meanwhile:
#   TBVM-STDOUT <n>\n<n bytes>TBVM-STDERR <n>\n<n bytes>TBVM-EXIT <code>\n
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mkdir -p /run/netns /root
echo "TBVM: init at $(cut -d' ' -f1 /proc/uptime) s"
# shellcheck disable=SC2046 # one word per module
modprobe -a $(cat /etc/tbvm/modules) || echo "TBVM: modprobe -a failed"
/usr/sbin/ip link set lo up
echo "TBVM: $(wc -l </proc/modules) modules at $(cut -d' ' -f1 /proc/uptime) s"
stty -F /dev/ttyS1 raw -echo
: >/run/tbvm.out
: >/run/tbvm.err
# A live copy of the script's output on the console, for timeouts.
tail -f /run/tbvm.out /run/tbvm.err >/dev/console 2>&1 &
cd /root || exit
/bin/sh /etc/tbvm/script.sh </dev/null >/run/tbvm.out 2>/run/tbvm.err
rc=$?
cd / || exit
echo "TBVM: script exited with $rc at $(cut -d' ' -f1 /proc/uptime) s"
# Snapshots: what the script left running may still write.
cp /run/tbvm.out /run/out
cp /run/tbvm.err /run/err
{
  echo "TBVM-STDOUT $(wc -c </run/out)"
  cat /run/out
  echo "TBVM-STDERR $(wc -c </run/err)"
  cat /run/err
  echo "TBVM-EXIT $rc"
} >/dev/ttyS1
poweroff -f
