#!/usr/bin/env bash
# Set up (first run) and run every test: lint and type checks (ruff, mypy; CLIP_FILTER_LINT=0 skips them),
# backend unit + integration (pytest, live uvicorn servers),
# web UI component tests (Vitest) and end-to-end tests in headless Chromium against a live backend.
# Exit status: 0 only when every stage ran tests and all passed.
#
#   ./run_tests.sh            everything, locally (no Docker needed)
#   ./run_tests.sh --docker   the unit and integration stages through docker compose
set -euo pipefail
source "$(dirname "$0")/scripts/setup.sh"
cd "$ROOT"

if [ "${1:-}" = "--docker" ]; then
    command -v docker >/dev/null || die "docker not found"
    # The tiny random model, and a project of its own so the tests never touch a real stack's volumes.
    export CLIP_MODEL=clip-filter-tiny CLIP_PRETRAINED=random CLIP_FILTER_START_PERIOD=3m
    compose=(docker compose -f docker-compose.yml -p clip-filter-test --profile test)
    # The backend requires API keys inside its container: a throwaway bootstrap key for this test stack
    # (readable by the container's user; docs/security.md).
    if [ -z "${CLIP_FILTER_API_KEY_FILE:-}" ]; then
        CLIP_FILTER_API_KEY_FILE="$(mktemp)"
        python3 -c 'import secrets; print(secrets.token_hex(32))' > "$CLIP_FILTER_API_KEY_FILE"
        chmod 644 "$CLIP_FILTER_API_KEY_FILE"
        export CLIP_FILTER_API_KEY_FILE
    fi
    status=0
    "${compose[@]}" build || status=$?
    if [ "$status" = 0 ]; then "${compose[@]}" run --rm unit-tests || status=$?; fi
    if [ "$status" = 0 ]; then
        # --wait returns once the backend's healthcheck passes, and fails if it never does.
        if "${compose[@]}" up -d --wait backend; then
            "${compose[@]}" run --rm integration-tests || status=$?
        else
            status=1
            "${compose[@]}" logs backend
        fi
    fi
    "${compose[@]}" down -v --remove-orphans || true
    exit "$status"
fi

ARTIFACTS="$ROOT/test-artifacts"
mkdir -p "$ARTIFACTS"
setup_python
setup_frontend
ensure_chromium
export CHROMIUM_PATH="$(chromium_path)"

failed=()
run_stage() {
    local name="$1"; shift
    log "stage: $name"
    local code=0
    "$@" || code=$?
    if [ "$code" = 5 ]; then
        log "stage $name collected no tests: that is a failure"
    fi
    if [ "$code" != 0 ]; then failed+=("$name (exit $code)"); fi
}

# On by default (CI included: .ci/run execs this script); CLIP_FILTER_LINT=0 skips it for a quick local run.
if [ "${CLIP_FILTER_LINT:-1}" = 1 ]; then
    run_stage "lint (ruff, mypy)" "$ROOT/scripts/lint.sh"
else
    log "stage lint (ruff, mypy) skipped (CLIP_FILTER_LINT=0); scripts/lint.sh runs it alone"
fi
run_stage "backend (pytest)" "$VENV/bin/python" -m pytest "$BACKEND/tests" -p no:cacheprovider \
    --junitxml="$ARTIFACTS/pytest.xml" -o junit_family=xunit2
run_stage "web UI components (vitest)" bash -c "cd '$FRONTEND' && npm test --silent"
run_stage "end-to-end (chromium)" bash -c "cd '$FRONTEND' && CLIP_FILTER_VENV='$VENV' npm run e2e --silent"

if [ "${#failed[@]}" -gt 0 ]; then
    log "FAILED stages: ${failed[*]}"
    exit 1
fi
log "all stages passed; screenshots in $ARTIFACTS/screenshots"
