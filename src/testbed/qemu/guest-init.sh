#!/bin/busybox sh
# /init of the e2e test guest (busybox initramfs). It loads the drivers the tests
# need, then either runs the command agent from the initramfs or, when the kernel
# command line names a virtiofs tag in xdpvm.root=, makes the host's / (shared
# read-only) the guest's root, so tests run the host's node on this checkout.
# Markers starting with XDPVM- on the console let the host time the boot.

/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t devtmpfs devtmpfs /dev
# The kernel may have started us without a console; make sure the log reaches ttyS0.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "XDPVM-INIT $(uptime_s)"

# Value of key=value on the kernel command line (the last one wins), empty if absent.
param() {
  value=
  for kv in $(cat /proc/cmdline); do
    case "$kv" in "$1"=*) value=${kv#*=} ;; esac
  done
  echo "$value"
}

fatal() {
  echo "XDPVM-FATAL $*"
  poweroff -f
}

groups=$(param xdpvm.modules)
[ -n "$groups" ] || groups=core,usb
for group in $(echo "$groups" | tr ',' ' '); do
  if [ ! -f "/lib/modules/$group.order" ]; then
    echo "XDPVM-WARN unknown module group $group"
    continue
  fi
  while read -r mod; do
    insmod "/lib/modules/$mod" || echo "XDPVM-WARN insmod $mod failed"
  done <"/lib/modules/$group.order"
done
echo "XDPVM-MODULES $(uptime_s)"

# No udev here: name the virtio-serial ports the way its 60-virtio rule would.
for port in /sys/class/virtio-ports/vport*; do
  [ -r "$port/name" ] || continue
  name=$(cat "$port/name")
  [ -n "$name" ] || continue
  mkdir -p /dev/virtio-ports
  ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
done

root=$(param xdpvm.root)
if [ -z "$root" ]; then
  echo "XDPVM-AGENT-START $(uptime_s)"
  exec sh -c 'while :; do sh /agent.sh; echo "XDPVM-AGENT-EXIT $?"; sleep 1; done'
fi

mount -t virtiofs -o ro "$root" /newroot || fatal "cannot mount virtiofs tag $root as root"
echo "XDPVM-ROOT-MOUNTED $(uptime_s)"
# The host's / is read-only; give the guest private writable scratch space,
# keeping the checkout the tests run visible even when it lives under /tmp.
checkout=$(param xdpvm.checkout)
if [ -n "$checkout" ]; then
  mkdir -p /checkout
  mount --bind "/newroot$checkout" /checkout || fatal "cannot see the checkout $checkout"
fi
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fatal "no /tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || fatal "no /run"
if [ -n "$checkout" ]; then
  mkdir -p "/newroot$checkout" 2>/dev/null
  mount --move /checkout "/newroot$checkout" || fatal "cannot place the checkout at $checkout"
fi
mkdir -p /newroot/run/xdpvm
cp /agent.sh /newroot/run/xdpvm/agent.sh
echo "XDPVM-SWITCH-ROOT $(uptime_s)"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
# PID 1 is the host's /bin/sh from here on: it restarts the agent should it die.
exec switch_root /newroot /bin/sh -c 'while :; do /bin/sh /run/xdpvm/agent.sh; echo "XDPVM-AGENT-EXIT $?"; sleep 1; done'
