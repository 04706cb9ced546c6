#!/usr/bin/env bash
# Lint and type checks of the backend: ruff (lint rules, then formatting) and mypy, configured in
# clip-filter-backend/pyproject.toml. Runs all three and exits non-zero when any of them has findings.
# Uses the venv that run.sh / run_tests.sh set up (CLIP_FILTER_VENV to use another).
#
#   scripts/lint.sh           check
#   scripts/lint.sh --fix     let ruff fix what it can and format the files first, then check
set -uo pipefail
source "$(dirname "$0")/setup.sh"
cd "$BACKEND" || die "no backend folder at $BACKEND"
for tool in ruff mypy; do
    [ -x "$VENV/bin/$tool" ] || die "$tool is not installed in $VENV: run ./run_tests.sh once (or pip install -e '$BACKEND[test]')"
done

if [ "${1:-}" = "--fix" ]; then
    "$VENV/bin/ruff" check --config pyproject.toml --fix . ../scripts || true
    "$VENV/bin/ruff" format --config pyproject.toml . ../scripts
fi

failed=()
# The package, its tests and the repository's Python scripts, all under the backend's configuration.
log "ruff check"
"$VENV/bin/ruff" check --config pyproject.toml . ../scripts || failed+=("ruff check")
log "ruff format --check"
"$VENV/bin/ruff" format --check --config pyproject.toml . ../scripts || failed+=("ruff format")
log "mypy clip_filter"
"$VENV/bin/mypy" clip_filter ../scripts/gen_api_docs.py || failed+=("mypy")

if [ "${#failed[@]}" -gt 0 ]; then
    log "lint findings from: ${failed[*]}"
    exit 1
fi
log "lint clean"
