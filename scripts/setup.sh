# Shared set-up steps for run.sh and run_tests.sh (sourced, not run).
# Idempotent: each step is skipped when what it would install is already there.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLIP_FILTER_VENV:-$ROOT/.venv}"
BACKEND="$ROOT/clip-filter-backend"
FRONTEND="$ROOT/clip-filter-frontend"

log() { printf '\033[1m[clip-filter]\033[0m %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

setup_python() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null || die "$python not found: install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python 3.10+ is needed, found $("$python" --version)"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating the virtual environment in $VENV"
        if ! "$python" -m venv "$VENV" 2>/dev/null; then
            # Debian ships venv's ensurepip separately; install it when we may, else say how.
            rm -rf "$VENV"
            apt_install python3-venv || die "could not create a venv (Debian: apt-get install python3-venv)"
            "$python" -m venv "$VENV" || die "could not create a venv in $VENV"
        fi
    fi
    # Reinstall only when the pins or the package metadata changed; pip keeps its download cache.
    local stamp="$VENV/.clip-filter-installed"
    local want
    want="$(cat "$BACKEND/requirements.lock" "$BACKEND/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing the backend and its pinned dependencies (torch is large: the first time takes a while)"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade "pip>=24" || die "pip upgrade failed"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
            -c "$BACKEND/requirements.lock" -e "$BACKEND[test]" || die "pip install failed"
        echo "$want" >"$stamp"
    fi
}

setup_frontend() {
    command -v npm >/dev/null || die "npm not found: install Node.js 20.19+ (Debian 13: apt-get install nodejs npm)"
    # Vite needs ^20.19 or >= 22.12 (package-lock.json's engines); npm only warns, the build then fails obscurely.
    node -e 'const [a, b] = process.versions.node.split(".").map(Number);
             process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1)' \
        || die "Node.js 20.19+ (or 22.12+) is needed, found $(node --version): Debian 12 ships 18, take Node.js from NodeSource (deb.nodesource.com) or Debian 13"
    local stamp="$FRONTEND/node_modules/.clip-filter-installed"
    local want
    want="$(sha256sum "$FRONTEND/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing the web UI's packages (npm ci)"
        (cd "$FRONTEND" && npm ci --no-audit --no-fund) || die "npm ci failed"
        echo "$want" >"$stamp"
    fi
    log "building the web UI"
    (cd "$FRONTEND" && npm run build --silent) || die "the web UI build failed"
}

# apt-get install as root, or through sudo; returns non-zero when neither is possible.
apt_install() {
    command -v apt-get >/dev/null || return 1
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || return 1
        sudo=(sudo)
    fi
    log "installing Debian packages: $*"
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

chromium_path() {
    for candidate in "${CHROMIUM_PATH:-}" /usr/bin/chromium /usr/bin/chromium-browser /usr/bin/google-chrome; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    done
    return 1
}

ensure_chromium() {
    if chromium_path >/dev/null; then return 0; fi
    apt_install chromium || die "apt-get install chromium failed"
    chromium_path >/dev/null || die "no Chromium found: install it (Debian: apt-get install chromium) or set CHROMIUM_PATH"
}
