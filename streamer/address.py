"""HOST:PORT arguments, checked once with one clear error for the user."""
from __future__ import annotations

import ipaddress

from ..training.errors import UserError

LOCAL_HOST = "127.0.0.1"  # where our servers listen unless the user names another address


def parse_address(text: str, option: str, default_host: str | None = None,
                  default_port: int | None = None) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port); `option` names the flag in the error.

    With `default_host`, `PORT` and `:PORT` mean that host; with `default_port`, `HOST` and
    `[IPV6]` mean that port.
    """
    full = text.strip()
    if default_port is not None and (":" not in full or (full.startswith("[") and full.endswith("]"))):
        full = f"{full}:{default_port}"
    host, _, port_text = full.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or default_host or ""
    example = f"{option} 127.0.0.1:{default_port or 9000}"
    if not host:
        raise UserError(f"{option} {text!r} is not HOST{'[:PORT]' if default_port else ':PORT'}, e.g. {example}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"{option} {text!r}: the port must be a number from 1 to 65535, e.g. {example}")
    return host, int(port_text)


def parse_listen_address(text: str, option: str) -> tuple[str, int]:
    """Where a server listens: `PORT`, `:PORT`, `HOST:PORT` or `[IPV6]:PORT`.

    No host means this machine only (127.0.0.1): nothing is reachable from the network unless the
    user names an address.
    """
    return parse_address(text, option, default_host=LOCAL_HOST)


def all_interfaces(host: str) -> bool:
    """Whether listening on `host` ("", 0.0.0.0, ::) accepts connections from every network."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        return False
