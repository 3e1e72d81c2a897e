# Command agent of the e2e test guest, on the virtio-serial port org.xdpvm.agent.
# POSIX sh: it runs under busybox in the initramfs and under the host's /bin/sh
# after switch_root. Under TCG every exec of a dynamically linked program costs
# ~50 ms, so the agent sticks to shell builtins wherever it can.
#
# host -> guest:
#   RUN <id> <time limit in s> <n>      followed by the n lines of a sh script
# guest -> host:
#   READY <uptime>                      each time the port is (re)opened
#   OUT <id>                            then the raw stdout, then "\n<id> EOF\n"
#   ERR <id>                            then the raw stderr, then "\n<id> EOF\n"
#   END <id> <exit status>
# OUT and ERR are left out when empty. <id> is a random token chosen by the host,
# so it does not turn up inside the output it delimits.

PORT=/dev/virtio-ports/org.xdpvm.agent
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C.UTF-8
WORK=/run/xdpvm/agent
mkdir -p "$WORK" 2>/dev/null || WORK=/tmp/xdpvm-agent
mkdir -p "$WORK"

link_ports() {
  for port in /sys/class/virtio-ports/vport*; do
    [ -r "$port/name" ] || continue
    read -r name <"$port/name"
    [ -n "$name" ] || continue
    mkdir -p /dev/virtio-ports
    ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
  done
}

emit() { # stream id file
  [ -s "$3" ] || return 0
  echo "$1 $2"
  cat "$3"
  printf '\n%s EOF\n' "$2"
}

run_one() { # id limit lines
  n=$3
  while [ "$n" -gt 0 ] && IFS= read -r line <&3; do
    printf '%s\n' "$line"
    n=$((n - 1))
  done >"$WORK/cmd.sh"
  # A forked subshell sources the script: no exec, and `exit` ends only the subshell.
  (exec 3>&-; cd / && . "$WORK/cmd.sh") </dev/null >"$WORK/out" 2>"$WORK/err" &
  pid=$!
  (
    exec 3>&-
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    sleep "$2" &
    nap=$!
    wait "$nap"
    kill -KILL "$pid" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  watchdog=$!
  wait "$pid"
  status=$?
  kill "$watchdog" 2>/dev/null
  emit OUT "$1" "$WORK/out"
  emit ERR "$1" "$WORK/err"
  echo "END $1 $status"
}

while :; do
  [ -e "$PORT" ] || link_ports
  # While no host is connected, reads return EOF at once: poll gently.
  if ! { exec 3<>"$PORT"; } 2>/dev/null; then
    sleep 0.2
    continue
  fi
  read -r up _ </proc/uptime
  echo "READY $up" >&3
  while read -r verb id limit lines <&3; do
    case "$verb" in
      RUN) run_one "$id" "$limit" "$lines" >&3 ;;
      *) echo "END $id 255" >&3 ;;
    esac
  done
  exec 3<&-
  sleep 0.2
done
