#!/usr/bin/env bash
# Writes requirements/lock.txt: the exact version of every package that the quick start
# (scripts/demo.sh), the tests (scripts/test.sh) and CI install, for Python 3.11 on Linux x86-64.
# It resolves pyproject.toml's ranges afresh (newest releases they allow) in a throwaway virtual
# environment: pip and setuptools, then emotalk-stream[train,test]; then it checks that the plain
# runtime install (`.`, no extras) resolves inside the same lock. Nothing outside that
# environment and requirements/lock.txt is touched. Several minutes (torch and its CUDA libraries
# are ~3 GB to download the first time; pip's cache keeps them).
# Usage: bash scripts/lock.sh        then: bash scripts/test.sh        (docs/install.md)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements/lock.txt"
PY="${PYTHON:-python3.11}"

say() { echo "lock: $*" >&2; }
die() { say "$*"; exit 1; }

command -v "$PY" >/dev/null || die "$PY not found (set PYTHON=/path/to/python3.11)"
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PY is not Python 3.11: the lock is for Python 3.11 on Linux x86-64"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "the lock is for Linux x86-64, not $(uname -s)-$(uname -m)"

# Resolve from the project's own ranges, never from an older lock a caller may have in the environment.
unset PIP_CONSTRAINT PIP_BUILD_CONSTRAINT PIP_REQUIREMENT PIP_REQUIRE_VIRTUALENV PIP_USER PIP_TARGET PIP_PREFIX
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

WORK="$(mktemp -d /tmp/emotalk-lock.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/pip.log"
pip_() {  # pip in the throwaway environment; its output goes to the log, shown only on failure
    if ! "$WORK/venv/bin/python" -m pip "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "pip $1 failed (above: the end of its log)"
    fi
}

start=$SECONDS
say "resolving in a throwaway environment ($("$PY" -V), $WORK)"
"$PY" -m venv "$WORK/venv"
pip_ install --upgrade pip
# The build backend (pyproject's build-system requires) is locked too: scripts/setup.sh builds the
# project with it (--build-constraint). It is installed with the project in one resolution, so it
# is a release the project's dependencies accept (torch caps setuptools).
BUILD_REQUIRES="$("$PY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$ROOT/pyproject.toml")"
mapfile -t BUILD_REQUIRES <<<"$BUILD_REQUIRES"
say "installing emotalk-stream[train,test] (torch and CUDA libraries: minutes the first time)"
pip_ install -e "$ROOT[train,test]" "${BUILD_REQUIRES[@]}"
pip_ check

NEW="$WORK/lock.txt"
"$WORK/venv/bin/python" - "$NEW" "$PY" <<'EOF'
import datetime, importlib.metadata as md, platform, re, sys

out, py = sys.argv[1], sys.argv[2]
pins = {}
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name != "emotalk-stream":
        pins[name] = dist.version
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
with open(out, "w") as f:
    f.write(
        "# Exact versions of every package that the quick start (scripts/demo.sh), the tests\n"
        "# (scripts/test.sh) and CI install, for Python 3.11 on Linux x86-64: a pip constraints file,\n"
        "#   pip install -c requirements/lock.txt -e '.[train,test]'\n"
        f"# Written by scripts/lock.sh on {now} (Python {platform.python_version()}, pip {pins['pip']});\n"
        "# do not edit by hand. To move to new versions: bash scripts/lock.sh, then bash scripts/test.sh\n"
    )
    for name in sorted(pins):
        f.write(f"{name}=={pins[name]}\n")
EOF

# The lock must reproduce itself, and the runtime-only install (the quick start) must resolve to
# packages and versions inside it: resolve both from nothing (dry run) and compare.
check() {  # check LABEL SPEC
    pip_ install --dry-run --ignore-installed -c "$NEW" --build-constraint "$NEW" --report "$WORK/$1.json" "$2"
    "$WORK/venv/bin/python" - "$NEW" "$WORK/$1.json" "$1" <<'EOF'
import json, re, sys

lock_path, report_path, label = sys.argv[1:]
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
lock = {}
for line in open(lock_path):
    if not line.startswith("#"):
        name, version = line.strip().split("==")
        lock[name] = version
got = {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(open(report_path))["install"]}
got.pop("emotalk-stream", None)
bad = [f"{n}=={v} (lock: {lock.get(n, 'absent')})" for n, v in sorted(got.items()) if lock.get(n) != v]
if bad:
    sys.exit(f"lock: the {label} install resolves outside the lock: " + ", ".join(bad))
if label == "full":
    missing = sorted(set(lock) - set(got) - {"pip", "setuptools"})
    if missing:
        sys.exit("lock: pinned but not installed by [train,test]: " + ", ".join(missing))
print(f"lock: {label} install: {len(got)} packages, all as locked", file=sys.stderr)
EOF
}
check full "$ROOT[train,test]"
check runtime "$ROOT"
"$WORK/venv/bin/python" -c 'import json,sys; sys.exit(any(i["metadata"]["name"].lower()=="torch" for i in json.load(open(sys.argv[1]))["install"]))' \
    "$WORK/runtime.json" || die "the runtime install (no extras) pulls torch"

mkdir -p "$(dirname "$LOCK")"
old="$( [ -f "$LOCK" ] && grep -v '^#' "$LOCK" || true)"
cp "$NEW" "$LOCK"
say "wrote requirements/lock.txt: $(grep -vc '^#' "$LOCK") packages, $((SECONDS - start)) s"
if [ -z "$old" ]; then
    say "(a new file)"
elif changes="$(diff <(echo "$old") <(grep -v '^#' "$LOCK"))"; then
    say "no version changed"
else
    echo "$changes" | sed -n 's/^< /  was /p; s/^> /  now /p' >&2
fi
say "next: bash scripts/test.sh"
