#!/usr/bin/env bash
# Install the system packages the demo (or the whole test suite) needs, as root, on Debian/Ubuntu
# (apt-get) or Fedora (dnf). Shared by testbed/demo.sh (README command 1) and .ci/run (command 2).
#   bash testbed/host-packages.sh demo|ci
# Nothing is done (not even `apt-get update`) when every package is already installed, so a
# second run costs a few milliseconds. A held apt/dpkg lock (unattended-upgrades, another
# apt-get) is waited for, up to ZINCATI_PY_APT_LOCK_TIMEOUT seconds (default 900; a look every
# ZINCATI_PY_APT_RETRY_SECS, default 2), not failed on:
# DPkg::Lock::Timeout covers dpkg's locks, but `apt-get update` (the lists lock) and the
# archives lock do not honour it in apt 2.6, so those are retried while apt says a lock is held.
set -euo pipefail

profile=${1:-demo}
lock_timeout=${ZINCATI_PY_APT_LOCK_TIMEOUT:-900}
retry_secs=${ZINCATI_PY_APT_RETRY_SECS:-2}

# --- what is installed, and why ---------------------------------------------------------------
# demo: dbus-daemon (private buses), systemd (a real `systemd --user` manager, systemd-analyze),
#   util-linux (unshare: private mount namespaces), procps, python3-dbusmock (logind's double,
#   runs under /usr/bin/python3), python3 + venv, and what compiles pystemd from PyPI
#   (gcc, pkg-config, libsystemd headers, Python headers); ca-certificates for pip; tzdata.
# ci: the demo's, plus etcd (the lock server's HA backend), rpm tooling (the RPM build and
#   rpmlint test) and node (evaluates the shipped polkit rules, which are JavaScript);
#   systemd-container (systemd-nspawn) and mmdebstrap (its rootfs) for the real-host tier;
#   chromium and its WebDriver (the lock server's web view is tested in a headless browser).
debian_demo=(dbus systemd util-linux procps python3 python3-venv python3-dev python3-dbusmock
  libsystemd-dev pkg-config gcc ca-certificates tzdata)
debian_ci=(etcd-server etcd-client rpm rpmlint nodejs systemd-container mmdebstrap
  chromium chromium-driver)
fedora_demo=(dbus-daemon systemd util-linux procps-ng python3 python3-devel python3-dbusmock
  python3-gobject systemd-devel pkgconf-pkg-config gcc ca-certificates tzdata)
fedora_ci=(etcd rpm-build rpmlint nodejs systemd-container mmdebstrap chromium
  chromedriver)

case $profile in
  demo) debian=("${debian_demo[@]}") fedora=("${fedora_demo[@]}") ;;
  ci) debian=("${debian_demo[@]}" "${debian_ci[@]}") fedora=("${fedora_demo[@]}" "${fedora_ci[@]}") ;;
  *) echo "usage: $0 demo|ci" >&2; exit 64 ;;
esac

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "zincati-py: missing system packages: $*" >&2
    echo "zincati-py: run this as root (sudo) to install them" >&2
    exit 77
  fi
}

# `apt-get ARGS`, waiting while another apt/dpkg holds one of its locks. apt's progress is
# shown as it goes, on stderr (a fresh machine installs for minutes), minus the lock complaints.
lock_re='Could not get lock|Unable to lock|Unable to acquire the dpkg|is held by process'
apt_get() {
  local deadline=$((SECONDS + lock_timeout)) log rc told=0 quiet=-q
  log=$(mktemp)
  while :; do
    rc=0
    apt-get "$quiet" -o DPkg::Lock::Timeout="$lock_timeout" "$@" 2>&1 | tee "$log" \
      | { grep --line-buffered -v -E "$lock_re" >&2 || true; } || rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then rm -f "$log"; return 0; fi
    if grep -q -E "$lock_re" "$log"; then
      if [ "$SECONDS" -lt "$deadline" ]; then
        if [ "$told" -eq 0 ]; then
          echo "zincati-py: another apt/dpkg holds its lock; waiting (up to ${lock_timeout}s)" >&2
          told=1
          quiet=-qq  # retries: no progress lines, only what is not a lock complaint
        fi
        sleep "$retry_secs"
        continue
      fi
      grep -E "$lock_re" "$log" >&2 || true
      echo "zincati-py: gave up waiting for the apt/dpkg lock after ${lock_timeout}s" >&2
    fi
    rm -f "$log"
    return "$rc"
  done
}

if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  missing=()
  for p in "${debian[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi
  need_root "${missing[@]}"
  echo "zincati-py: installing with apt-get: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_get update
  apt_get install -y --no-install-recommends "${missing[@]}"
elif command -v dnf >/dev/null; then
  missing=()
  for p in "${fedora[@]}"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi
  need_root "${missing[@]}"
  echo "zincati-py: installing with dnf: ${missing[*]}" >&2
  # dnf waits for another dnf's lock by itself.
  dnf install -y -q --setopt=install_weak_deps=False "${missing[@]}"
else
  echo "zincati-py: neither apt-get nor dnf found; install by hand: ${debian[*]}" >&2
  exit 69
fi
