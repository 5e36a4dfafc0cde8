#!/usr/bin/env bash
# Installs everything StreamSpace needs on a fresh Debian machine, idempotently:
#   - the Debian packages the product runs (when missing; as root it installs them,
#     otherwise it prints the exact apt-get command and stops);
#   - a virtualenv in .venv with the pinned Python dependencies (requirements*.txt);
#   - the npm packages of htdocs/ (noVNC, pinned by htdocs/package-lock.json).
# Usage: scripts/setup.sh [run|test]   ("test" also installs the test extras)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
mode="${1:-run}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$here/.venv}"

# Packages the product needs to run: PostgreSQL (embedded database), TigerVNC (local
# sessions), the applications of the default catalog, Node/npm (installs noVNC),
# util-linux (setsid and setpriv: supervised children in their own session, signalled
# when the control plane dies).
run_pkgs=(postgresql tigervnc-standalone-server xterm icewm chromium x11-utils
          fonts-dejavu-core fonts-noto-color-emoji xfonts-base procps util-linux bubblewrap)
# Node may come from elsewhere (e.g. nodesource's nodejs bundles npm and conflicts with
# Debian's npm): only ask Debian for it when the commands are missing.
command -v npm >/dev/null 2>&1 || run_pkgs+=(nodejs npm)
# Packages the test suite needs on top (chromium is the browser under test; the suite
# starts its own dockerd and makes base images with debootstrap). Debian's docker.io only
# when no Docker engine is installed: docker-ce (Docker's own packages) conflicts with it.
test_pkgs=(chromium debootstrap)
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || test_pkgs+=(docker.io)
# The Docker platform's tests pull from a registry of their own on loopback.
test_pkgs+=(docker-registry)

pkgs=("${run_pkgs[@]}")
[ "$mode" = "test" ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

stamp="$VENV/.installed-$mode"
reqs=(requirements.txt)
[ "$mode" = "test" ] && reqs+=(requirements-test.txt)
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ -n "$(find "${reqs[@]}" setup.cfg pyproject.toml -newer "$stamp" 2>/dev/null)" ]; then
  echo "setup: installing Python dependencies (${reqs[*]})"
  "$VENV/bin/pip" install -q --disable-pip-version-check $(printf -- '-r %s ' "${reqs[@]}") 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  # The repository root goes on the venv's path (streamspace/, agent/ and the twistd
  # plugins in twisted/plugins/), so `twistd streamspace` works from any directory.
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$here" > "$site/streamspace-checkout.pth"
  "$VENV/bin/python" -c "import twisted, klein, autobahn, txpostgres, psycopg2" \
    || { echo "setup: Python dependencies failed to install" >&2; exit 1; }
  touch "$stamp"
fi

# The local platform's sandbox (and its tests) need bubblewrap to create namespaces as
# root; some machines forbid it (a container under Docker's default seccomp profile, a
# kernel without user/pid namespaces). Say so in one line rather than in many failing tests.
if [ "$mode" = "test" ] && [ "$(id -u)" = "0" ]; then
  if ! why="$(bwrap --unshare-pid --ro-bind / / true 2>&1)"; then
    echo "setup: bubblewrap cannot create namespaces on this machine (bwrap --unshare-pid: ${why:-failed}); the local platform's sandbox tests need a host or VM that allows them" >&2
    exit 1
  fi
fi

if [ -f htdocs/package.json ]; then
  if [ ! -d htdocs/node_modules ] || [ htdocs/package-lock.json -nt htdocs/node_modules ]; then
    echo "setup: installing npm packages of htdocs/"
    (cd htdocs && npm ci --no-audit --no-fund --loglevel=error)
    touch htdocs/node_modules
  fi
fi
