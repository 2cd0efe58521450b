#!/usr/bin/env bash
# README command 1: set this machine up and run the demo, from any checkout path.
#   sudo bash testbed/demo.sh [DEMO ARGS...]     (default args: --fast)
# 1. installs the system packages the demo needs (testbed/host-packages.sh demo; skipped when
#    all are present; waits for a held apt/dpkg lock),
# 2. makes a venv (ZINCATI_PY_DEMO_VENV, default .venv-demo in the checkout) from the system
#    python3 and installs the project and its test bed into it, editable (skipped when done),
# 3. runs `zincati-py demo ARGS` from that venv (root: the demo uses private mount namespaces).
# A second run reuses everything and starts the demo within seconds.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
venv=${ZINCATI_PY_DEMO_VENV:-$repo/.venv-demo}
python=${ZINCATI_PY_DEMO_PYTHON:-/usr/bin/python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$(id -u)" -ne 0 ]; then
  echo "zincati-py: the demo needs root (private mount namespaces): sudo bash $0 $*" >&2
  exit 77
fi

bash "$repo/testbed/host-packages.sh" demo
# systemd's user manager wants a machine id; a fresh container may have an empty one.
[ -s /etc/machine-id ] || systemd-machine-id-setup >/dev/null

# The install is current when the venv imports both packages from this checkout and the
# dependency lists have not changed since (editable: source edits need no reinstall).
stamp=$venv/.zincati-py-demo-stamp
want=$(cat "$repo/pyproject.toml" "$repo/testbed/pyproject.toml" | sha256sum | cut -d' ' -f1)
want="$want $repo"
installed() {
  [ -x "$venv/bin/zincati-py" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
    && "$venv/bin/python" -c 'import zincati_py, testbed, pystemd, dbus_fast' 2>/dev/null
}
if ! installed; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "zincati-py: $python is not Python >= 3.11 (set ZINCATI_PY_DEMO_PYTHON to one)" >&2
    exit 69
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "zincati-py: creating $venv ($("$python" --version))" >&2
    "$python" -m venv "$venv"
  fi
  echo "zincati-py: installing zincati-py and its test bed into $venv (pip)" >&2
  # pip's and setuptools' chatter goes to a log, shown only if something fails.
  log=$venv/pip-install.log
  if ! { "$venv/bin/python" -m pip install -q -U pip "setuptools>=77" \
    && "$venv/bin/python" -m pip install -q -e "$repo" -e "$repo/testbed"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "zincati-py: pip install failed (log: $log)" >&2
    exit 1
  fi
  printf '%s\n' "$want" >"$stamp"
fi

if [ "$#" -eq 0 ]; then set -- --fast; fi
exec "$venv/bin/zincati-py" demo "$@"
