#!/bin/sh
# /init of kvmvm's default initramfs (busybox sh, PID 1).
# Mounts the usual filesystems, tells the VMM's boot timer that user space is up, prints
# one ready line, runs a shell on the console, and powers the VM off when the shell exits.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=${TERM:-linux}
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
hostname kvmvm 2>/dev/null
ip link set lo up 2>/dev/null

# kvmvm's boot timer (Firecracker's convention): one byte 123 at MMIO 0xd0000000.
devmem 0xd0000000 8 123 2>/dev/null

echo "kvmvm: init ready"

export PS1='kvmvm:\w# '
if grep -qw kvmvm.console=pipe /proc/cmdline; then
  # The host's input is a pipe (kvmvm boot < script): a shell reading a pipe runs the
  # lines as they come and ends at the host's end of input (^D, read by dd in the
  # console's canonical mode); an interactive shell's line editor would not see it.
  # dd, not cat: busybox cat copies with sendfile(), and Linux 6.1 splices a tty into a
  # pipe holding the pipe's lock while it waits for the next line, so the shell got each
  # line only when the one after it arrived. A FIFO, not a pipeline: the shell's `exit`
  # then ends the VM at once (dd would only learn of it when writing the next line).
  mkfifo /run/console-in
  dd if=/dev/console of=/run/console-in bs=4096 2>/dev/null &
  sh < /run/console-in
  kill $! 2>/dev/null
else
  # setsid + cttyhack give the interactive shell a controlling tty (job control, ^C)
  setsid cttyhack sh
fi
sync
# Without ACPI, power-off only halts; a reboot (with reboot=t) exits the VM instead.
[ -d /sys/firmware/acpi/tables ] && poweroff -f
reboot -f
