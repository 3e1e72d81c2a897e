#!/usr/bin/env bash
# Install what xdg-desktop-portal-vm needs on a Debian 12 (or 13) machine:
# the Debian packages for the chosen purpose, then the npm packages, then the
# build. Safe to run again: it installs only what is missing and says so.
#
#   scripts/setup.sh runtime   the host daemon and guest backend
#   scripts/setup.sh tests     everything the three test tiers start
#   scripts/setup.sh demo      what `npm run demo` boots
set -euo pipefail
purpose=${1:-tests}
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

runtime=(
  dbus-daemon             # private buses in tests, and the session bus
  xdg-desktop-portal      # the stock frontend, document store and permission store
  fuse3                   # the document store's FUSE mount
  qemu-system-common      # virtiofsd (/usr/lib/qemu/virtiofsd)
  uidmap                  # newuidmap/newgidmap: virtiofsd in a user namespace when the daemon is not root
  passt                   # user-mode networks: one unprivileged passt per VM and network, which QEMU's -netdev stream connects to
  iproute2 dnsmasq-base   # the privileged helper: ip makes taps and vm-only bridges, dnsmasq serves DHCP on vm-only bridges
  build-essential python3 # the AF_VSOCK addon, built at npm install
)
tests=(
  xdg-desktop-portal-dev  # the interface XML our dbus-interfaces are checked against
  qemu-system-x86         # e2e guests, under TCG where KVM cannot boot them
  busybox-static cpio xz-utils zstd  # the e2e guest's initramfs and kernel unpacking
  gjs gir1.2-gtk-3.0 gir1.2-gtk-4.0 gir1.2-adw-1  # the GTK app test and the consent dialog
  xvfb xauth xdotool x11-utils imagemagick tesseract-ocr  # dialogs under a private X server
  flatpak                 # `flatpak permission-show` reads our permission rows
  bubblewrap              # bwrap: the bench's sandboxed-local baseline, a host app the portal takes for a Flatpak app
  libvirt-clients libxml2-utils  # virsh, and libvirt's domain schema checked with xmllint
  libvirt-daemon-system libvirt-daemon-driver-qemu  # a private libvirtd for the libvirt e2e tests
  python3-yaml            # reads cloud-hypervisor's OpenAPI file in its adapter's tests
  lintian                 # checks the .deb files npm run package builds (dpkg-deb is in dpkg)
  util-linux              # setpriv and unshare for the e2e guests' root share
  libglib2.0-bin          # gdbus: a test calls a guest backend's bus API directly, as a hostile app would
  xdg-desktop-portal-gtk  # the real host file dialog, driven by keystrokes in one test
  dunst                   # a real notification server on the host bus for the Notification test (dunstctl history, action)
  python3-pyqt5 qt5-xdgdesktopportal-platformtheme  # a real Qt app asking the portal for files
)
demo=(qemu-system-x86 busybox-static cpio xz-utils zstd)

case "$purpose" in
  runtime) wanted=("${runtime[@]}") ;;
  tests) wanted=("${runtime[@]}" "${tests[@]}") ;;
  demo) wanted=("${runtime[@]}" "${demo[@]}") ;;
  *) echo "usage: $0 runtime|tests|demo" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if ((${#missing[@]})); then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root to install: ${missing[*]}"; exit 1; }
    sudo=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages for '$purpose': all present"
fi

if [ "$(id -u)" -eq 0 ]; then
  # The host daemon never runs as root, as on a desktop: run as root, the
  # tests and the demo run the host session as this ordinary user, with
  # subordinate ids for virtiofsd's user namespace (README "Tests").
  test_user=${XDP_VM_TEST_USER:-xdpvm-test}
  if ! id "$test_user" >/dev/null 2>&1; then
    say "creating the user $test_user (useradd; run as root, the tests and the demo run the host session as it, never as root)"
    useradd --create-home --shell /usr/sbin/nologin --comment 'xdg-desktop-portal-vm tests' "$test_user"
  fi
  if ! grep -q "^$test_user:" /etc/subuid 2>/dev/null || ! grep -q "^$test_user:" /etc/subgid 2>/dev/null; then
    start=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: 'BEGIN { m = 100000 } NF >= 3 && $2 + $3 > m { m = $2 + $3 } END { print m }')
    say "giving $test_user subordinate uids and gids $start-$((start + 65535)) (usermod; for virtiofsd's user namespace)"
    usermod --add-subuids "$start-$((start + 65535))" --add-subgids "$start-$((start + 65535))" "$test_user"
  fi
  # design.md §6: no udev runs here, and Debian's udev would make /dev/fuse 0666.
  if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
    say "making /dev/fuse 0666, as Debian's udev does (no udev runs here), so $test_user's document store can mount"
    chmod 0666 /dev/fuse
  fi
fi

node_ok=$(node -e 'const [a,b]=process.versions.node.split(".").map(Number);console.log(a>20||(a===20&&b>=19)?1:0)')
if [ "$node_ok" != 1 ]; then
  say "Node $(node --version) is too old: this project needs 20.19 or newer (Debian 13's nodejs)"
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # npm install, not npm ci: the registry this runs against may lack other
  # platforms' optional packages (rollup's), which npm ci insists on finding.
  say "installing npm packages (npm install of the locked versions; builds the native addon)"
  npm install --no-audit --no-fund
else
  say "npm packages: up to date"
fi
if [ ! -f native/vsock/build/Release/vsock.node ]; then
  say "building the AF_VSOCK addon"
  node native/build.mjs
fi

say "building (TypeScript and the GJS dialogs)"
npm run --silent build
say "ready"
