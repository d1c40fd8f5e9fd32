"""`emotalk-bench --startup`: the runtime's footprint and startup, the figures issue 10 sets targets for.

Every figure is taken from fresh processes started the way users start them (the console script),
so nothing this process has already imported or warmed up flatters the result:

- venv_mb: a fresh virtual environment after `pip install .` without extras (only with --venv-size:
  it needs the package index or pip's cache, and a minute);
- help_s: wall time of `emotalk-stream --help`;
- first_packet_s: from starting `emotalk-stream --wav` to the first OSC datagram on a real socket;
- rss_mb, torch_imported: peak resident memory of a whole streaming run, and whether it imported torch.

This module imports only the standard library and the error helpers, so measuring does not depend
on (or pay for) the model stack.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..training.errors import DISTRIBUTION, UserError
from ..training.model_files import SAMPLE_SPEECH

PROG = "emotalk-bench"
ENTRY = "emotalk_stream.streamer.cli:main"  # [project.scripts] emotalk-stream
TARGETS: dict[str, Any] = {"venv_mb": 300, "help_s": 0.5, "first_packet_s": 1.0, "rss_mb": 200,
                           "torch_imported": False}
HELP_RUNS = 5
PACKET_RUNS = 3
FIRST_PACKET_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120.0
SAMPLE_EVERY_S = 0.01
# Left out when the checkout is copied for `pip install .`: what .gitignore ignores, and git itself.
SKIP_ANYWHERE = {".git", "__pycache__", ".pytest_cache", "build"}
SKIP_AT_ROOT = {".venv", "venv", "dist", "out", "runs", "data"}

# Runs the console entry in this very process, then says whether torch got imported and its own
# peak RSS: truthful without changing emotalk-stream. argv: module, function, report file, the
# command's arguments.
WRAPPER = """\
import importlib, json, sys
module, function, report = sys.argv[1:4]
sys.argv = ["emotalk-stream", *sys.argv[4:]]
rc = 1
try:
    rc = getattr(importlib.import_module(module), function)(sys.argv[1:])
finally:
    try:
        with open("/proc/self/status") as status:
            hwm = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    except OSError:
        hwm = None
    with open(report, "w") as out:
        json.dump({"rc": rc, "torch": "torch" in sys.modules, "vmhwm_kb": hwm}, out)
sys.exit(rc)
"""


def median(values: Iterable[float]) -> float:
    """The median: robust to one run hit by a cold disk cache or a busy CPU."""
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def parse_vmhwm_mb(status: str) -> float | None:
    """Peak resident set ("VmHWM:  123456 kB") from the text of /proc/PID/status, in MB."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) / 1024
    return None


def read_vmhwm_mb(pid: int) -> float | None:
    """VmHWM of a running process, or None where /proc is absent or the process is gone."""
    try:
        return parse_vmhwm_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def maxrss_mb(ru_maxrss: int) -> float:
    """ru_maxrss in MB: kilobytes on Linux, bytes on macOS."""
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 1024


def disk_usage_mb(folder: Path) -> float:
    """What `du -s` reports, in MB: allocated blocks, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, folders, files in os.walk(folder):  # does not follow links (a venv's lib64 -> lib)
        for name in [".", *folders, *files]:
            st = os.lstat(os.path.join(top, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total / 2**20


def stream_command() -> list[str]:
    """`emotalk-stream` as installed next to this interpreter, else the module (same code, no shim)."""
    script = Path(sys.executable).parent / ("emotalk-stream.exe" if os.name == "nt" else "emotalk-stream")
    return [str(script)] if script.exists() else [sys.executable, "-m", ENTRY.split(":")[0]]


def sample_speech() -> Path:
    """The bundled voice clip, found through the installed package (works from a wheel too)."""
    if not SAMPLE_SPEECH.exists():
        raise UserError(f"the bundled sample clip {SAMPLE_SPEECH} is missing: reinstall {DISTRIBUTION}")
    return SAMPLE_SPEECH


def source_root() -> Path | None:
    """The checkout this package runs from, or None when it is installed from a wheel."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.exists() and f'name = "{DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def udp_receiver() -> tuple[socket.socket, str]:
    """A real UDP socket on loopback, OS-chosen port, and its HOST:PORT for --osc."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def tail(path: Path) -> str:
    """The last line a failed child wrote on stderr, for a one-line error."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "no message"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (emotalk-stream stops cleanly on it), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_help(command: list[str], runs: int = HELP_RUNS) -> float:
    """Median wall time of `COMMAND --help`, after one warm-up run (page cache, .pyc files)."""
    times = []
    for n in range(runs + 1):
        began = time.perf_counter()
        done = subprocess.run([*command, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no message"]
            raise UserError(f"{' '.join(command)} --help failed (exit {done.returncode}): {last[0]}")
        if n > 0:
            times.append(elapsed)
    return median(times)


def time_first_packet(command: list[str], sample: Path, scratch: Path) -> float:
    """Seconds from starting a paced `--wav` stream to the first datagram on a socket bound here."""
    sock, address = udp_receiver()
    errors = scratch / "first-packet.err"
    try:
        with errors.open("wb") as err:
            began = time.perf_counter()
            proc = subprocess.Popen([*command, "--wav", str(sample), "--osc", address, "--quiet"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            try:
                sock.settimeout(0.02)
                while time.perf_counter() - began < FIRST_PACKET_TIMEOUT_S:
                    try:
                        sock.recv(65536)
                        return time.perf_counter() - began
                    except (TimeoutError, socket.timeout):
                        pass
                    if proc.poll() is not None:
                        raise UserError(f"emotalk-stream exited (code {proc.returncode}) before sending "
                                        f"anything: {tail(errors)}")
                raise UserError(f"emotalk-stream sent nothing within {FIRST_PACKET_TIMEOUT_S:.0f} s")
            finally:
                stop(proc)
    finally:
        sock.close()


def measure_stream_run(sample: Path, scratch: Path, entry: str = ENTRY) -> tuple[float, bool]:
    """Peak RSS (MB) of a whole unpaced streaming run, and whether that very process imported torch.

    The console entry runs under WRAPPER, which reports `sys.modules` and its VmHWM after it
    returns; VmHWM is also sampled while it runs. ru_maxrss (from wait4, never this bench's
    RUSAGE_CHILDREN) is only the fallback where /proc is absent: on Linux it also counts the
    parent's memory at the time of the vfork+exec, so a bench that has imported torch would
    read ~500 MB for a 100 MB child."""
    sock, address = udp_receiver()  # a listener, so the sink's datagrams go somewhere real
    report, errors = scratch / "stream-run.json", scratch / "stream-run.err"
    module, function = entry.split(":")
    arguments = ["--wav", str(sample), "--no-pace", "--osc", address, "--quiet"]
    try:
        with errors.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", WRAPPER, module, function, str(report), *arguments],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            sampled: list[float] = []
            began = time.perf_counter()
            try:
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid == proc.pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        break
                    hwm = read_vmhwm_mb(proc.pid)
                    sampled += [] if hwm is None else [hwm]
                    if time.perf_counter() - began > RUN_TIMEOUT_S:
                        raise UserError(f"emotalk-stream --no-pace did not finish within {RUN_TIMEOUT_S:.0f} s")
                    time.sleep(SAMPLE_EVERY_S)
            finally:
                stop(proc)
    finally:
        sock.close()
    if proc.returncode != 0 or not report.exists():
        raise UserError(f"emotalk-stream --no-pace failed (exit {proc.returncode}): {tail(errors)}")
    facts = json.loads(report.read_text())
    own = [] if facts["vmhwm_kb"] is None else [facts["vmhwm_kb"] / 1024]
    peak = max(sampled + own) if sampled or own else maxrss_mb(usage.ru_maxrss)
    return peak, bool(facts["torch"])


def copy_checkout(root: Path, to: Path) -> Path:
    """The checkout without ignored build output, so `pip install .` neither sees stale files
    (build/, an editable install's egg-info) nor writes into the working tree."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in SKIP_ANYWHERE or n.endswith(".egg-info")}
        return skip | (set(names) & SKIP_AT_ROOT if Path(folder) == root else set())

    shutil.copytree(root, to, ignore=ignore, symlinks=True)
    return to


def measure_venv(root: Path, scratch: Path, progress: bool) -> dict[str, Any]:
    """Size of a fresh venv after `pip install .` (no extras), whether torch got in, install time.

    The venv comes from this interpreter (`-m venv` makes a plain one even when run from a venv),
    so it has the Python version the other figures were measured with."""
    source, venv = copy_checkout(root, scratch / "src"), scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    command = [str(python), "-m", "pip", "install", "--quiet", str(source)]
    lock = root / "requirements" / "lock.txt"
    if lock.exists():
        command += ["-c", str(lock)]
    if progress:
        print(f"{PROG}: pip install {'-c requirements/lock.txt ' if lock.exists() else ''}. "
              f"into a fresh venv (a minute)", file=sys.stderr)
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise UserError(f"pip install . into a fresh venv failed: {last[0]}")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return {"venv_mb": round(disk_usage_mb(venv), 1), "venv_has_torch": (Path(site) / "torch").is_dir(),
            "venv_install_s": round(seconds, 1), "venv_lock": lock.exists()}


def meets(name: str, value: Any) -> bool | None:
    """Whether a figure meets its issue-10 target (None where it was not measured)."""
    if value is None:
        return None
    target = TARGETS[name]
    return value == target if isinstance(target, bool) else value <= target


def measure(venv_size: bool, progress: bool) -> dict[str, Any]:
    """Every figure, with the targets and where it was measured."""
    def say(message: str) -> None:
        if progress:
            print(f"{PROG}: {message}", file=sys.stderr)

    root = source_root() if venv_size else None
    if venv_size and root is None:
        raise UserError(f"--venv-size installs the source checkout, and {DISTRIBUTION} is not running from "
                        f"one (installed from a wheel): run it from a clone")
    command, sample = stream_command(), sample_speech()
    result: dict[str, Any] = {"venv_mb": None, "venv_has_torch": None, "venv_install_s": None}
    with tempfile.TemporaryDirectory(prefix="emotalk-startup-") as tmp:
        scratch = Path(tmp)
        say(f"timing {' '.join(command)} --help ({HELP_RUNS} runs after a warm-up)")
        result["help_s"] = round(time_help(command), 4)
        say(f"timing the first OSC packet of a paced --wav stream ({PACKET_RUNS} runs)")
        result["first_packet_s"] = round(median(time_first_packet(command, sample, scratch)
                                                for _ in range(PACKET_RUNS)), 4)
        say("peak memory and imports of an unpaced --wav stream")
        rss, torch_imported = measure_stream_run(sample, scratch)
        result["rss_mb"], result["torch_imported"] = round(rss, 1), torch_imported
        if root is not None:
            result.update(measure_venv(root, scratch, progress))
    result["met"] = {name: meets(name, result[name]) for name in TARGETS}
    result["targets"] = TARGETS
    result["command"] = command
    result["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    result["platform"] = platform.platform()
    return result


def summary(result: dict[str, Any]) -> str:
    """A few lines for people: each figure against its target."""
    def line(name: str, text: str, target: str) -> str:
        verdict = {True: "ok", False: "MISSED", None: "not measured"}[result["met"][name]]
        return f"  {name:<15}{text:<12}target {target:<11}{verdict}"

    venv = result["venv_mb"]
    lines = ["startup and footprint (issue 10 targets):",
             line("venv_mb", "-" if venv is None else f"{venv:.0f} MB", "<= 300 MB")
             + ("  (--venv-size measures it)" if venv is None else
                f"  (torch {'in' if result['venv_has_torch'] else 'not in'} it, pip took {result['venv_install_s']:.0f} s)"),
             line("help_s", f"{result['help_s']:.3f} s", "<= 0.5 s"),
             line("first_packet_s", f"{result['first_packet_s']:.3f} s", "<= 1 s"),
             line("rss_mb", f"{result['rss_mb']:.0f} MB", "<= 200 MB"),
             line("torch_imported", "yes" if result["torch_imported"] else "no", "no")]
    return "\n".join(lines)


def run_startup(as_json: bool, venv_size: bool) -> None:
    """Measure and print: one JSON object with --json, else the summary. Progress goes to stderr
    only where it cannot spoil a JSON consumer (not --json, or stderr is a terminal)."""
    result = measure(venv_size, progress=not as_json or sys.stderr.isatty())
    print(json.dumps(result, indent=2) if as_json else summary(result))


def main(argv: list[str] | None = None) -> int:
    """The same measurement without the bench's model stack: `python -m emotalk_stream.tools.startup`."""
    import argparse

    from ..training.errors import add_debug_flag, run_cli

    parser = argparse.ArgumentParser(prog=PROG, description="Runtime footprint and startup (emotalk-bench --startup).")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--venv-size", action="store_true", help="also pip install . into a fresh venv and size it")
    add_debug_flag(parser)
    return run_cli(PROG, lambda args: run_startup(args.json, args.venv_size), parser, argv)


if __name__ == "__main__":
    sys.exit(main())
