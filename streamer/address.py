"""HOST:PORT arguments, checked once with one clear error for the user."""
from __future__ import annotations

from ..training.errors import UserError


def parse_address(text: str, option: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port); `option` names the flag in the error."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    example = f"{option} 127.0.0.1:9000"
    if not sep or not host:
        raise UserError(f"{option} {text!r} is not HOST:PORT, e.g. {example}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"{option} {text!r}: the port must be a number from 1 to 65535, e.g. {example}")
    return host, int(port_text)
