#!/usr/bin/env bash
# Shared set-up for the quick-start commands: Debian packages, a virtual environment, the package,
# every Python package at the exact version in requirements/lock.txt (docs/install.md).
# Usage: source scripts/setup.sh [PIP_EXTRAS] [DEBIAN_PACKAGES...]
#   PIP_EXTRAS: "" for the runtime only (no PyTorch), or e.g. "train,test". EMOTALK_VENV: the
#   environment's folder (default .venv). pip's output goes to $VENV/setup.log, shown on failure.
set -euo pipefail

EXTRAS="${1:-}"
shift || true
APT_PACKAGES=("$@")
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMOTALK_VENV:-$ROOT/.venv}"
LOCK="$ROOT/requirements/lock.txt"

_setup_say() { echo "setup: $*" >&2; }
_setup_as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
_setup_run() {  # LOG COMMAND...: quiet on success; on failure the end of the log, then stop
    local log="$1"; shift
    if ! "$@" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        _setup_say "failed: $* (whole log: $log)"
        return 1
    fi
}
_setup_pip() {
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off \
        _setup_run "$VENV/setup.log" "$VENV/bin/python" -m pip "$@"
}

missing=()
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    _setup_say "Debian packages: installing ${missing[*]}"
    apt_log="$(mktemp /tmp/emotalk-apt.XXXXXX.log)"
    _setup_run "$apt_log" _setup_as_root apt-get update -q
    _setup_run "$apt_log" _setup_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q "${missing[@]}"
    rm -f "$apt_log"
fi

if [ ! -x "$VENV/bin/python" ]; then
    _setup_say "creating ${VENV#"$ROOT"/}"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || _setup_say "warning: $("$VENV/bin/python" -V) in ${VENV#"$ROOT"/}; requirements/lock.txt is for Python 3.11"
: >"$VENV/setup.log"

# pip itself first (the locked release, and setuptools with it); then the project, built with the
# locked setuptools (--build-constraint) and installed with the locked versions of everything.
_setup_pip install -c "$LOCK" pip setuptools
_setup_say "pip $(sed -n 's/^pip==//p' "$LOCK") and setuptools $(sed -n 's/^setuptools==//p' "$LOCK"), as locked"

spec="$ROOT"
if [ -n "$EXTRAS" ]; then
    spec="$ROOT[$EXTRAS]"
    what="emotalk-stream[$EXTRAS]"
    torch="$(sed -n 's/^torch==//p' "$LOCK")"
    if [[ ",$EXTRAS," == *,train,* ]] && ! "$VENV/bin/python" -c \
        'import importlib.metadata as m, sys; sys.exit(m.version("torch") != sys.argv[1])' "$torch" 2>/dev/null; then
        what="$what (torch $torch and its CUDA libraries: ~3 GB, minutes)"
    fi
else
    what="emotalk-stream, runtime only (no PyTorch)"
fi
_setup_say "installing $what"
_setup_pip install -c "$LOCK" --build-constraint "$LOCK" -e "$spec"
_setup_say "ready: ${VENV#"$ROOT"/} has the versions in requirements/lock.txt"
unset -f _setup_say _setup_as_root _setup_run _setup_pip
export PATH="$VENV/bin:$PATH"
