#!/usr/bin/env bash
# Shared set-up for the quick-start commands: Debian packages, a virtual environment, the package.
# Usage: source scripts/setup.sh [PIP_EXTRAS] [DEBIAN_PACKAGES...]
set -euo pipefail

EXTRAS="${1:-}"
shift || true
APT_PACKAGES=("$@")
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMOTALK_VENV:-$ROOT/.venv}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
spec="$ROOT"
[ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
echo "setup: installing emotalk-stream${EXTRAS:+[$EXTRAS]} (torch 2.11 the first time: a few minutes)" >&2
"$VENV/bin/python" -m pip install -q -e "$spec"
export PATH="$VENV/bin:$PATH"
