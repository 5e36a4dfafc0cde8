#!/usr/bin/env bash
# `make run`: the control plane (with its embedded PostgreSQL unless DB_* / DATABASE_URL
# say otherwise) and a dev-mode local agent, in the foreground until Ctrl-C, which stops
# everything it started. Where it listens, where its state and the admin password are:
# the control plane says so itself in its log (this script guesses nothing).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
VENV="${VENV:-$here/.venv}"
export STREAMSPACE_STATE_DIR="${STREAMSPACE_STATE_DIR:-$here/.streamspace}"
export STREAMSPACE_LOCAL_AGENT="${STREAMSPACE_LOCAL_AGENT:-1}"
exec "$VENV/bin/twistd" --nodaemon --pidfile= --logger=streamspace_common.logs.observer streamspace "$@"
