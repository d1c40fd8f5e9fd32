"""One clear error line for the user, a traceback only with --debug.

Every command raises `UserError` for problems the user can fix (bad input, missing tool, wrong
checkpoint) and runs its body through `run_cli`, which prints `PROG: error: MESSAGE` and exits 2.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

DISTRIBUTION = "emotalk-stream"
TRAINING_MODULES = ("torch", "torchaudio")  # what the `train` extra adds that the runtime lacks


class UserError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), the one every --version prints."""
    import importlib.metadata  # here, not at the top: 50 ms that only --version needs
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install .)"


def version_line(prog: str) -> str:
    """What every command's --version prints."""
    return f"{prog} {package_version()}"


def missing_modules(names: tuple[str, ...], extra: str) -> str | None:
    """Why `names` cannot be imported here and the install that fixes it, or None when they can."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"the {extra} extra ({', '.join(missing)} not installed): pip install '{DISTRIBUTION}[{extra}]'"


def require_training(what: str) -> None:
    """Refuse, in one line, work that needs PyTorch where only the runtime is installed."""
    problem = missing_modules(TRAINING_MODULES, "train")
    if problem:
        raise UserError(f"{what} needs {problem}")


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error without its usage block: the contract is one line (the usage is in --help)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


class _Version(argparse.Action):
    """argparse's version action, reading the version only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_line(parser.prog))
        parser.exit(0)


def run_cli(prog: str, body: Callable[[argparse.Namespace], int | None],
            parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv`, run `body`, and turn failures into one line on stderr (exit 2)."""
    parser.error = functools.partial(_one_line_error, parser)  # type: ignore[method-assign]
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad option already reported in one line
        return int(exc.code or 0)
    return run_reporting(prog, body, args)


def run_reporting(prog: str, body: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run `body(args)`; a failure becomes one line on stderr (exit 2), a traceback only with --debug."""
    try:
        return int(body(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless --debug
        if getattr(args, "debug", False):
            traceback.print_exc()
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc} (run with --debug for details)"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
