"""`--preset APP`: the options each app's receiver needs, as a layer under the config file and the
command line (`config.py` applies it; docs/vtuber-apps.md walks through each app's own settings).

A preset is written as a config file would be, keys being option names without `--`, so it goes
through the same checks. Everything goes to this machine (127.0.0.1) at the app's default port;
give the option yourself to send elsewhere (`--preset vseeface --osc 192.168.1.20:39539`).
"""
from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # VMC to VSeeFace's OSC/VMC receiver. The VRM presets only: every VRM avatar has them, and a
    # perfect-sync avatar would get its mouth driven twice by both sets (--vmc-shapes perfectsync).
    "vseeface": {"osc": ["127.0.0.1:39539"], "osc-format": ["vmc"], "vmc-shapes": "presets"},
    # iFacialMocap: these apps take it as a phone's face tracking, perfect sync or VRM presets
    # chosen by the app for the avatar it has.
    "vmagicmirror": {"ifacialmocap": ["127.0.0.1:49983"]},
    "warudo": {"ifacialmocap": ["127.0.0.1:49983"]},
    "vnyan": {"ifacialmocap": ["127.0.0.1:49983"]},
    "unreal": {"livelink": ["127.0.0.1:11111"]},
    "obs": {"ws": "127.0.0.1:8765"},  # a browser source on http://127.0.0.1:8765/?mode=obs
}


def describe(preset: dict[str, object]) -> str:
    """A preset as the command-line options it stands for, e.g. `--osc 127.0.0.1:39539 --osc-format vmc`."""
    words = []
    for key, value in preset.items():
        for item in value if isinstance(value, list) else [value]:
            words.append(f"--{key} {item}")
    return " ".join(words)
