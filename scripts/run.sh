#!/usr/bin/env bash
# `make run`: the control plane (with its embedded PostgreSQL unless DB_* / DATABASE_URL
# say otherwise) in the foreground until Ctrl-C, which stops everything it started.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
VENV="${VENV:-$here/.venv}"
export STREAMSPACE_STATE_DIR="${STREAMSPACE_STATE_DIR:-$here/.streamspace}"
port="${PORT:-8080}"

# Where it will listen, by the control plane's own rule (streamspace/config.py,
# listen_interface): LISTEN_ADDRESS, else 127.0.0.1 in dev mode (no external database),
# else all interfaces. The control plane confirms it in its log once it listens.
if [ -n "${LISTEN_ADDRESS:-}" ]; then
  address="$LISTEN_ADDRESS"
elif [ -n "${DATABASE_URL:-}${DB_HOST:-}" ] && [ -z "${STREAMSPACE_DEV:-}" ]; then
  address="0.0.0.0"
else
  address="127.0.0.1"
fi
scheme=http; [ -n "${TLS_CERT:-}" ] && scheme=https
case "$address" in *:*) shown="[$address]" ;; *) shown="$address" ;; esac
echo "StreamSpace: starting the control plane on ${scheme}://${shown}:${port}"
echo "  state directory: ${STREAMSPACE_STATE_DIR}"
if [ -z "${ADMIN_PASSWORD:-}" ]; then
  echo "  admin credentials: username 'admin', password in ${STREAMSPACE_STATE_DIR}/admin-credentials"
  echo "    (printed below on the first start; set ADMIN_PASSWORD to choose it)"
else
  echo "  admin credentials: username 'admin', password from ADMIN_PASSWORD"
fi
echo "  stop with Ctrl-C"
export STREAMSPACE_LOCAL_AGENT="${STREAMSPACE_LOCAL_AGENT:-1}"
exec "$VENV/bin/twistd" --nodaemon --pidfile= --logger=streamspace_common.logs.observer streamspace "$@"
