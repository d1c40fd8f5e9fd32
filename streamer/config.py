"""Settings in layers: built-in defaults < `--preset` < config file < its `--profile` < command line.

The config file is TOML. Its keys are `emotalk-stream`'s long options without `--` (`osc`,
`vmc-shapes`, `no-blink`; `_` for `-` also works); values have the option's type: a string, a
number, true/false for a flag, a list for a repeatable option. Named profiles are tables under
`profile`:

    preset = "vseeface"
    emotion = "auto"

    [profile.unreal]
    preset = "unreal"
    fps = 60

A later layer replaces an earlier one's value of the same option (a list too: `--osc` on the
command line replaces the file's `osc`), and naming one audio source drops the others of earlier
layers. Without `--config`, the file at `default_path()` is read if there is one.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..training.errors import UserError
from .presets import PRESETS

NOT_IN_FILES = {"help", "version", "config", "profile"}  # what only the command line may say
PROFILES = "profile"  # the table of named profiles
APP = "emotalk-stream"
# tomllib's words for a bad escape, e.g. `"C:\Users"` (\U wants 8 hex digits) or `"C:\data"`
BAD_ESCAPES = ("Unescaped '\\'", "Invalid hex value", "not a Unicode scalar value")
WINDOWS_PATHS = ("in double quotes a backslash starts an escape (\\t is a tab), so write Windows paths in "
                 "single quotes ('C:\\takes\\take.csv') or with forward slashes (\"C:/takes/take.csv\")")


def default_path() -> Path:
    """The config file read without --config: %APPDATA%\\emotalk-stream\\config.toml on Windows,
    else $XDG_CONFIG_HOME/emotalk-stream/config.toml (~/.config by default)."""
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / APP / "config.toml"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / APP / "config.toml"


def settle(args: argparse.Namespace, argv: list[str], make_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Set every option of `args` (parsed from `argv` by a `make_parser()` parser) from the layers, in place."""
    parser = make_parser()
    options = {_key(a): a for a in parser._actions if a.option_strings and _key(a) not in NOT_IN_FILES}
    exclusive = [group._group_actions for group in parser._mutually_exclusive_groups]
    given = _given(make_parser(), argv)
    top, profile = _read(Path(args.config) if args.config else None, args.profile, options, exclusive)
    preset = given.get("preset") or profile.get("preset") or top.get("preset")
    layers = [_layer(PRESETS[preset], options, exclusive, f"--preset {preset}")] if preset else []
    final = {a.dest: list(a.default) if isinstance(a.default, list) else a.default for a in options.values()}
    for layer in (*layers, top, profile, given):
        for dest, value in layer.items():
            for group in exclusive:
                if value and dest in {a.dest for a in group}:  # one audio source drops the others
                    final.update({a.dest: a.default for a in group if a.dest != dest})
            final[dest] = value
    vars(args).update(final)


def _key(action: argparse.Action) -> str:
    """The config key of an option: its first long name without `--`."""
    return next(s for s in action.option_strings if s.startswith("--"))[2:]


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, object]:
    """The options `argv` names itself (the command line already parsed once, so this cannot fail)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return {dest: value for dest, value in vars(parser.parse_args(argv)).items() if dest not in NOT_IN_FILES}


def _read(path: Path | None, profile: str | None, options: dict[str, argparse.Action],
          exclusive: list[list[argparse.Action]]) -> tuple[dict[str, object], dict[str, object]]:
    """The file's top level and the chosen profile, checked, as {dest: value}; none without a file."""
    import tomllib  # only when settings are read, not for --help

    if path is None:
        path = default_path()
        if not path.is_file():
            if profile is not None:
                raise UserError(f"--profile {profile} needs a config file: pass --config FILE, or create {path}")
            return {}, {}
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))  # -sig: Windows editors may start with a BOM
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist: check --config") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path} ({exc.strerror}): check --config") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text: save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        fix = WINDOWS_PATHS if any(words in str(exc) for words in BAD_ESCAPES) else "fix it there"
        raise UserError(f"config file {path} is not valid TOML ({exc}): {fix}") from None
    profiles = data.pop(PROFILES, {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise UserError(f"config file {path}: {PROFILES} must hold tables, one per profile: [{PROFILES}.NAME]")
    top = _layer(data, options, exclusive, f"config file {path}")
    if profile is None:
        return top, {}
    if profile not in profiles:
        known = ", ".join(profiles) or "none"
        raise UserError(f"config file {path} has no profile {profile!r} (it has: {known}): "
                        f"add [{PROFILES}.{profile}] or pick one of them with --profile")
    return top, _layer(profiles[profile], options, exclusive, f"config file {path}, profile {profile}")


def _layer(table: dict[str, object], options: dict[str, argparse.Action], exclusive: list[list[argparse.Action]],
           where: str) -> dict[str, object]:
    """A table of settings as {dest: value}, each key an option and each value of its type, and at
    most one of each group of options that exclude each other (the audio sources)."""
    layer = {}
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        action = options.get(key)
        if action is None:
            near = difflib.get_close_matches(key, options, n=1)
            hint = f"did you mean {near[0]}?" if near else "keys are emotalk-stream's long options without --"
            raise UserError(f"{where}: unknown option {raw_key!r}: {hint} (see emotalk-stream --help)")
        layer[action.dest] = _value(key, value, action, where)
    for group in exclusive:
        named = [_key(a) for a in group if layer.get(a.dest)]
        if len(named) > 1:
            raise UserError(f"{where}: {' and '.join(named)} exclude each other: keep one")
    return layer


def _value(key: str, value: object, action: argparse.Action, where: str) -> object:
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key} is a flag: write {key} = true or false, not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):  # a repeatable option: a list, or one value
        return [_scalar(key, item, action, where) for item in (value if isinstance(value, list) else [value])]
    return _scalar(key, value, action, where)


def _scalar(key: str, value: object, action: argparse.Action, where: str) -> object:
    """One value as the option's type would make it from the command line, or one clear error."""
    kind = {int: "a whole number", float: "a number"}.get(action.type, "a string")
    fits = (isinstance(value, int) if action.type is int else
            isinstance(value, (int, float)) if action.type is float else
            isinstance(value, (str, int, float)))  # numbers are fine for text options: person = 3, ws = 8765
    if isinstance(value, bool) or not fits:
        raise UserError(f"{where}: {key} must be {kind}, not {value!r}")
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):  # "C:\takes" read as a tab
        raise UserError(f"{where}: {key} holds a tab, a newline or another control character: {WINDOWS_PATHS}")
    value = action.type(value) if action.type in (int, float) else str(value)
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: {key} must be one of {', '.join(map(str, action.choices))}, not {value!r}")
    return value
