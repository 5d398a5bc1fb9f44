#!/bin/busybox sh
# kvmhost L1 /init: load KVM (kvm_amd, nested) and 9p, mount the host root read-only at
# /host with the shares the host asked for (ctl/shares.sh) at their own paths, run the
# command (ctl/cmd.sh) with /host as its root mount, write its exit status, power off.
# Lines starting with "@@kvmhost " on the console are read by the host (runner.py).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "@@kvmhost $*" > /dev/console; }
fail() { say "error $*"; sync; poweroff -f; sleep 10; exit 1; }
load() {
  m=$1; shift
  insmod "/lib/modules/$m.ko" "$@" 2>/tmp/insmod.err || fail "insmod $m failed: $(cat /tmp/insmod.err) $(dmesg | grep -i "$m" | tail -n 2 | tr '\n' ' ')"
}

@MODULES@

[ -c /dev/kvm ] || fail "/dev/kvm did not appear in L1 (kvm_amd: $(dmesg | grep -i -e kvm -e svm | tail -n 3 | tr '\n' ' '))"

O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O kvmhostctl /ctl || fail "cannot mount the control share"
mount -t 9p -o $O,cache=loose,ro hostroot /host || fail "cannot mount the host root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
# what systemd would mount: crun/runc (podman's runtimes) need a cgroup file system
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || fail "cannot mount cgroup2 at /sys/fs/cgroup"
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
# share TAG PATH: a read-write host directory at the same path inside L1
share() {
  mkdir -p "/host$2" 2>/dev/null
  mount -t 9p -o $O,cache=loose "$1" "/host$2" || fail "cannot mount share $1 at $2"
}
. /ctl/shares.sh
ip link set lo up 2>/dev/null

# Pin the static keys KVM flips per VM: the first VM's creation turns preempt_notifier_key on
# and the last one's end turns it off; every vCPU's local APIC turns apic_sw_disabled on until
# its guest enables it. Each flip rewrites kernel code (text_poke: INT3 on every site, then
# IPIs), and QEMU 7.2's TCG sometimes never sees the final bytes: a vCPU then takes the same
# INT3 forever and the L1 freezes (exc_int3 and text_poke's IPI wait in the stall reports).
# One idle VM with an in-kernel irqchip and one never-run vCPU, held for L1's life, keeps
# both keys on, so kvmvm's VMs coming and going patch nothing.
# (In the background: Python's start in L1 takes seconds. It says "keeper keys pinned".)
( chroot /host /usr/bin/python3 -c '
import fcntl, os, signal
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, 0xAE01, 0)    # KVM_CREATE_VM
fcntl.ioctl(vm, 0xAE60, 0)          # KVM_CREATE_IRQCHIP
fcntl.ioctl(vm, 0xAE41, 0)          # KVM_CREATE_VCPU 0 (its APIC stays software-disabled)
with open("/dev/console", "w") as c:
    c.write("@@kvmhost keeper keys pinned\n")
while True:
    signal.pause()
' </dev/null 2>/tmp/keeper.err || say "keeper failed: $(tail -n 1 /tmp/keeper.err)" ) &

say "ready $(cut -d' ' -f1 /proc/uptime)"
# Heartbeat from memory only (no 9p): the host declares L1 stalled when beats stop.
( while :; do sleep 10; say "beat $(cut -d' ' -f1 /proc/uptime)"; done ) </dev/null >/dev/null 2>&1 &
# Not a plain chroot: Linux refuses a user namespace (passt's isolation) to a chrooted
# process. In a mount namespace of the command's own, the host's tree (with the mounts
# above) is moved onto / and becomes the root mount, as switch_root does.
unshare -m sh -c 'cd /host && mount -o move . / && exec chroot . /bin/sh /proc/self/fd/3' \
  3</ctl/cmd.sh </dev/null >/ctl/out 2>&1
st=$?
sync
echo "$st" > /ctl/status
say "status $st"
poweroff -f
sleep 10
