# Sourced by scripts/dev and scripts/test (and so .ci/run): create or refresh .venv with
# the exact versions of requirements/dev.txt (the `dev` extra, hashes checked), then the
# project itself, editable, without dependencies. Re-installs only when setup.cfg,
# pyproject.toml or the lock file changed. The lock is re-made by scripts/lock;
# scripts/check-latest tries the newest versions setup.cfg allows instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ALICODE_VENV:-$ROOT/.venv}"

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "alicode_gw needs Python 3.11 or newer (python3.11 not found)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)"
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        echo "could not create a virtualenv with $PY -m venv;" \
            "on Debian/Ubuntu install it with: apt-get install python3-venv" >&2
        exit 1
    fi
fi

STAMP="$VENV/.alicode-installed"
LOCK="$ROOT/requirements/dev.txt"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing alicode_gw and the locked dependencies into $VENV ..." >&2
    pip_() { "$VENV/bin/python" -m pip --quiet --disable-pip-version-check "$@"; }
    pip_ install --upgrade pip
    pip_ install --require-hashes -r "$LOCK"
    pip_ install --no-deps -e "$ROOT"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
