#!/usr/bin/env bash
# `make run`: the control plane (with its embedded PostgreSQL unless DB_* / DATABASE_URL
# say otherwise) in the foreground until Ctrl-C, which stops everything it started.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
VENV="${VENV:-$here/.venv}"
export STREAMSPACE_STATE_DIR="${STREAMSPACE_STATE_DIR:-$here/.streamspace}"
port="${PORT:-8080}"

echo "StreamSpace: starting the control plane on http://localhost:${port}"
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
