#!/usr/bin/env bash
# Set up (first run) and start clip-filter: the API and the web UI on http://127.0.0.1:5000
# Settings come from the environment (see README), e.g. CLIP_PRETRAINED=random ./run.sh
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"

setup_python
setup_frontend

export CLIP_FILTER_UI_DIR="${CLIP_FILTER_UI_DIR:-$FRONTEND/dist}"
export CLIP_FILTER_DATA_DIR="${CLIP_FILTER_DATA_DIR:-$ROOT/data}"
log "serving on http://${CLIP_FILTER_HOST:-127.0.0.1}:${CLIP_FILTER_PORT:-5000}  (API docs at /docs)"
exec "$VENV/bin/clip-filter" serve "$@"
