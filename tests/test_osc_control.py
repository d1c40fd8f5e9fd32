"""OSC controls into a real ControlBoard: valid changes apply, anything else is refused and counted,
and the server keeps listening whatever it is sent."""
from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from pythonosc.udp_client import SimpleUDPClient

from emotalk_stream.streamer.controls import ControlBoard
from emotalk_stream.streamer.osc_control import OscControlServer
from emotalk_stream.training.errors import UserError
from waiting import wait_for




@pytest.fixture
def server(board: ControlBoard) -> Iterator[OscControlServer]:
    control = OscControlServer("127.0.0.1", 0, board)
    control.open()
    yield control
    control.close()


@pytest.fixture
def client(server: OscControlServer) -> SimpleUDPClient:
    return SimpleUDPClient(*server.address)


def test_valid_controls_change_the_board(board: ControlBoard, client: SimpleUDPClient) -> None:
    client.send_message("/emotalk/emotion", "happy:0.5")
    wait_for(lambda: board.current[0].emotion == "happy:0.5")
    client.send_message("/emotalk/level", 0.3)
    wait_for(lambda: board.current[0].level == pytest.approx(0.3))  # sent as float32
    client.send_message("/emotalk/person", 2)
    wait_for(lambda: board.current[0].person == 2)
    client.send_message("/emotalk/gain", ["mouth", 1.5])
    wait_for(lambda: board.current[0].gains == {"mouth": 1.5})
    client.send_message("/emotalk/blink", 0)
    wait_for(lambda: board.current[1].blink is False)
    controls, face, version = board.current
    assert (controls.emotion, controls.person, face.blink) == ("happy:0.5", 2, False)  # nothing undone
    assert board.accepted == 5 and board.refused == 0 and version == 5


def _raw(server: OscControlServer, datagram: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, server.address)


@pytest.mark.parametrize("send", [
    pytest.param(lambda c, s: c.send_message("/emotalk/emotion", "furious"), id="unknown emotion"),
    pytest.param(lambda c, s: c.send_message("/emotalk/level", 7.0), id="level out of range"),
    pytest.param(lambda c, s: c.send_message("/emotalk/person", "x"), id="person not a number"),
    pytest.param(lambda c, s: c.send_message("/emotalk/gain", ["nose", 1.0]), id="unknown region"),
    pytest.param(lambda c, s: c.send_message("/emotalk/level", [0.3, 0.4]), id="two arguments"),
    pytest.param(lambda c, s: c.send_message("/emotalk/volume", 1.0), id="unknown address"),
    pytest.param(lambda c, s: _raw(s, b"\xde\xad\xbe\xef garbage"), id="garbage"),
    pytest.param(lambda c, s: _raw(s, b"/emotalk/person\x00,i\x00\x00\x00\x01"), id="int cut short"),
    pytest.param(lambda c, s: _raw(s, b"#bundle\x00" + bytes(7) + b"\x01\x00\x00\x00\x40/emotalk"),
                 id="bundle cut short"),
    pytest.param(lambda c, s: _raw(s, b"/\xff\xfe\x00,\x00\x00\x00"), id="address not UTF-8"),
])
def test_invalid_input_is_refused_and_the_server_keeps_serving(
        board: ControlBoard, server: OscControlServer, client: SimpleUDPClient, send) -> None:
    before = board.current
    send(client, server)
    wait_for(lambda: board.refused == 1)
    assert board.current == before and board.accepted == 0
    client.send_message("/emotalk/person", 3)
    wait_for(lambda: board.current[0].person == 3)
    assert board.refused == 1


def test_close_releases_the_port(board: ControlBoard) -> None:
    control = OscControlServer("127.0.0.1", 0, board)
    control.open()
    port = control.address[1]
    control.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))


def test_port_in_use_is_a_user_error(board: ControlBoard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as info:
            OscControlServer("127.0.0.1", port, board).open()
    assert str(info.value) == (f"--control 127.0.0.1:{port}: port {port} is in use; choose another port or "
                               "stop the program using it")


@pytest.mark.parametrize("host, words", [
    ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never local
    ("no-such-host.invalid", "cannot resolve host"),
])
def test_unusable_address_is_a_user_error(board: ControlBoard, host: str, words: str) -> None:
    with pytest.raises(UserError, match=re.escape(f"--control {host}:9000: ") + f".*{words}"):
        OscControlServer(host, 9000, board).open()
