# Shared set-up steps for scripts/run and scripts/test. Each step is idempotent and quiet when there
# is nothing to do: it compares a stamp (hash of the dependency files) before installing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '[setup] %s\n' "$*" >&2; }

stamp_ok() {  # stamp_ok <stamp file> <input files...>: true when the inputs did not change
  local stamp="$1"; shift
  local sum; sum="$(cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1)"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]
}
stamp_write() {
  local stamp="$1"; shift
  cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1 > "$stamp"
}

find_python() {
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.11 or 3.12 is required" >&2; return 1
}

ensure_venv() {  # ensure_venv [extras]: the locked dependencies, then the project itself (no deps)
  # requirements/runtime.txt, or requirements/<extras>.txt: pinned with hashes, made by
  # requirements/lock.sh from pyproject.toml (see its header to change or upgrade a dependency).
  local extras="${1:-}"
  local lock="$ROOT/requirements/${extras:-runtime}.txt"
  if [ ! -f "$lock" ]; then
    echo "missing lock file ${lock#$ROOT/} (requirements/lock.sh makes it)" >&2; return 1
  fi
  if [ ! -x "$PY" ]; then
    say "creating virtualenv in ${VENV#$ROOT/}"
    "$(find_python)" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
  fi
  local stamp="$VENV/.installed${extras:+-$extras}"
  if ! stamp_ok "$stamp" "$ROOT/pyproject.toml" "$lock"; then
    say "installing Python dependencies from ${lock#$ROOT/}"
    "$PY" -m pip install -q --require-hashes -r "$lock"
    "$PY" -m pip install -q --no-deps -e "$ROOT"
    stamp_write "$stamp" "$ROOT/pyproject.toml" "$lock"
  fi
}

ensure_npm() {  # ensure_npm <package dir>: npm ci when package-lock.json changed
  local dir="$1"
  [ -f "$dir/package-lock.json" ] || return 0
  if [ ! -d "$dir/node_modules" ] || ! stamp_ok "$dir/node_modules/.stamp" "$dir/package-lock.json"; then
    say "installing Node dependencies in ${dir#$ROOT/}"
    (cd "$dir" && PUPPETEER_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund --loglevel=error >&2)
    stamp_write "$dir/node_modules/.stamp" "$dir/package-lock.json"
  fi
}

apt_install() {  # apt_install <binary to test> <package>...
  local binary="$1"; shift
  command -v "$binary" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "warning: $binary is missing and cannot be installed here (needs root and apt-get): $*"
    return 1
  fi
  say "installing Debian packages: $*"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

ensure_chromium() { apt_install chromium chromium; }

# What the deployment tests check docs/OPERATIONS.md's files with (nginx -t, systemd-analyze verify,
# logrotate -d, a throwaway self-signed certificate).
ensure_ops_tools() {
  apt_install nginx nginx-light
  apt_install systemd-analyze systemd
  apt_install logrotate logrotate
  apt_install openssl openssl
}
