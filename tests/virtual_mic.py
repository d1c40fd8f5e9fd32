"""A private PulseAudio server with a virtual microphone, so tests record real audio without hardware.

`virtual_microphone()` starts its own `pulseaudio` daemon (own socket, runtime and state folders;
it never touches a desktop's sound server) with a null sink `vmic` at 48 kHz. A remap source
`vmic_mic` on the sink's monitor is the default input, so what `play` sends to the sink comes out
of the microphone. `unload_source`/`load_source` unplug and replug it; `suspend_source` silences it.

PortAudio reads PULSE_SERVER once, when it initialises: record in a subprocess started with `env`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from waiting import stop_process

SINK = "vmic"
SOURCE = "vmic_mic"
START_TIMEOUT_S = 15.0


@dataclass
class VirtualMicrophone:
    env: dict[str, str]  # for subprocesses: their sound goes to (and comes from) this server only
    folder: Path
    modules: list[str] = field(default_factory=list)  # loaded by load_source, newest last

    def pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def play(self, wav_path: str | Path) -> subprocess.Popen[bytes]:
        """Start playing a sound file into the null sink, i.e. into the microphone."""
        return subprocess.Popen(["paplay", f"--device={SINK}", str(wav_path)], env=self.env)

    def load_source(self) -> None:
        """(Re)create the sink and the microphone on its monitor, and make that the default input."""
        self.modules.append(self.pactl("load-module", "module-null-sink", f"sink_name={SINK}", "rate=48000"))
        self.modules.append(self.pactl("load-module", "module-remap-source", f"master={SINK}.monitor",
                                       f"source_name={SOURCE}"))
        self.pactl("set-default-source", SOURCE)

    def unload_source(self) -> None:
        """Make the microphone vanish, as if unplugged: its recording streams end.

        The sink goes too: PulseAudio would otherwise move the streams to the sink's monitor.
        """
        while self.modules:
            self.pactl("unload-module", self.modules.pop())

    def suspend_source(self, suspended: bool = True) -> None:
        """Stop (or resume) the microphone's audio without removing it: a device that goes silent."""
        self.pactl("suspend-source", SOURCE, "1" if suspended else "0")


def _answers(env: dict[str, str]) -> bool:
    return subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=10).returncode == 0


@contextlib.contextmanager
def virtual_microphone() -> Iterator[VirtualMicrophone]:
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the virtual microphone needs "
                    f"`apt install pulseaudio pulseaudio-utils`")
    # A short folder under /tmp: a unix socket path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="vmic-") as tmp:
        folder = Path(tmp)
        (folder / "home").mkdir()
        (folder / "client.conf").write_text("autospawn = no\n")
        env = {**os.environ,
               "HOME": str(folder / "home"),
               "XDG_RUNTIME_DIR": str(folder),
               "PULSE_RUNTIME_PATH": str(folder),
               "PULSE_STATE_PATH": str(folder / "state"),
               "PULSE_CLIENTCONFIG": str(folder / "client.conf"),
               "PULSE_SERVER": f"unix:{folder}/native"}
        for name in ("PULSE_SINK", "PULSE_SOURCE"):
            env.pop(name, None)
        # Root may run a per-user daemon (pulseaudio only warns); -n skips the system's default.pa,
        # so only these modules load and nothing probes real sound cards.
        command = ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                   "--use-pid-file=false", "--log-target=stderr",
                   "-L", f"module-native-protocol-unix socket={folder}/native auth-anonymous=1"]
        with (folder / "pulseaudio.log").open("wb") as log_file:
            daemon = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers(env):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "pulseaudio.log").read_text(errors="replace")
                    pytest.fail(f"the private pulseaudio did not start: {log[-2000:]}")
                time.sleep(0.05)
            microphone = VirtualMicrophone(env, folder)
            microphone.load_source()
            yield microphone
        finally:
            stop_process(daemon, 5)
