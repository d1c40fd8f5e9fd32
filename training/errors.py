"""One clear error line for the user, a traceback only with --debug.

Every command raises `UserError` for problems the user can fix (bad input, missing tool, wrong
checkpoint) and runs its body through `run_cli`, which prints `PROG: error: MESSAGE` and exits 2.
"""
from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error without its usage block: the contract is one line (the usage is in --help)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def run_cli(prog: str, body: Callable[[argparse.Namespace], int | None],
            parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv`, run `body`, and turn failures into one line on stderr (exit 2)."""
    parser.error = functools.partial(_one_line_error, parser)  # type: ignore[method-assign]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad option already reported in one line
        return int(exc.code or 0)
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
