"""Live controls over OSC: every `/emotalk/...` message (see `controls.py`) goes to the ControlBoard.

Messages are handled one at a time in arrival order (a later "level" wins) on a daemon thread.
Anything that is not OSC (python-osc would drop it silently, or fail on a non-UTF-8 address) is
refused and counted like an invalid control, and nothing a sender does stops the server. OSC has no
authentication, so listening on every interface is warned about.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_packet import OscPacket, ParseError
from pythonosc.osc_server import BlockingOSCUDPServer

from ..training.errors import UserError
from .address import all_interfaces
from .controls import ControlBoard

log = logging.getLogger(__name__)

POLL_S = 0.1  # how soon close() is noticed
BUNDLE_HEADER_BYTES = 16  # "#bundle\0" and the time tag


def _origin(client_address: tuple) -> str:
    return f"osc {client_address[0]}:{client_address[1]}"


def _elements_are_osc(bundle: bytes) -> bool:
    """Whether every element of a parsed bundle, at any depth, is a message or a bundle: python-osc
    skips any other with a log line only, so its content would vanish without a refusal."""
    at = BUNDLE_HEADER_BYTES
    while at < len(bundle):
        size = int.from_bytes(bundle[at:at + 4], "big")
        element = bundle[at + 4:at + 4 + size]
        if not (OscMessage.dgram_is_message(element)
                or (OscBundle.dgram_is_bundle(element) and _elements_are_osc(element))):
            return False
        at += 4 + size
    return True


class _Server(BlockingOSCUDPServer):
    """python-osc's server, refusing datagrams that are not OSC through the board."""

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, board: ControlBoard):
        self.board = board
        super().__init__(address, dispatcher)

    def verify_request(self, request: tuple[bytes, socket.socket], client_address: tuple) -> bool:
        data = request[0]
        try:
            OscPacket(data)
            valid = not OscBundle.dgram_is_bundle(data) or _elements_are_osc(data)
        except (ParseError, ValueError):  # ValueError: an address that is not UTF-8
            valid = False
        if not valid:
            self.board.refuse(_origin(client_address), f"{len(data)} bytes that are not an OSC message")
        return valid

    def handle_error(self, request: tuple[bytes, socket.socket], client_address: tuple) -> None:
        log.exception("osc control: the message from %s failed; still listening", _origin(client_address))


class OscControlServer:
    """Listens for OSC controls on `host`:`port` (port 0: any free port, see `address`)."""

    def __init__(self, host: str, port: int, board: ControlBoard):
        self.host, self.port, self._board = host, port, board
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        assert self._server is not None, "open() the server first"
        return self._server.server_address[:2]

    def open(self) -> None:
        """Bind and start serving; raises `UserError` when the address cannot be used."""
        dispatcher = Dispatcher(strict_timing=False)  # a future-dated bundle must not stall the server
        dispatcher.set_default_handler(self._handle, needs_reply_address=True)
        where = f"--control {self.host}:{self.port}"
        try:
            self._server = _Server((self.host, self.port), dispatcher, self._board)
        except socket.gaierror as exc:
            raise UserError(f"{where}: cannot resolve host {self.host!r} ({exc.strerror}); "
                            "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"{where}: port {self.port} is in use; choose another port or stop the "
                                "program using it") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"{where}: {self.host} is not an address of this machine; use 127.0.0.1, "
                                "0.0.0.0 or one of its own addresses") from None
            raise UserError(f"{where}: cannot listen there ({exc.strerror}); choose another port or "
                            "address") from None
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_S,),
                                        name="osc control", daemon=True)
        self._thread.start()
        log.info("osc control: listening on %s:%d", *self.address)
        if all_interfaces(self.host):
            log.warning("osc control %s:%d listens on every network interface: OSC has no authentication, "
                        "so anyone on your network can change the face; use --control 127.0.0.1:%d for this "
                        "machine only", self.host, self.address[1], self.address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        self._thread = None

    def handle_datagram(self, datagram: bytes, client_address: tuple[str, int]) -> None:
        """Handle `datagram` as if it had just arrived from `client_address`, without the socket.

        The serving thread's own path (socketserver: cut to the receive size, verify, process), so a
        fuzzer can feed 100 000 datagrams in seconds; what would be logged as a failure is raised.
        """
        assert self._server is not None, "open() the server first"
        request = (datagram[:self._server.max_packet_size], self._server.socket)
        if self._server.verify_request(request, client_address):
            self._server.process_request(request, client_address)

    def _handle(self, client_address: tuple, address: str, *args: object) -> None:
        self._board.submit_osc(address, args, _origin(client_address))
