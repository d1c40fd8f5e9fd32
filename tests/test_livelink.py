"""Live Link Face packets: checked byte by byte with a decoder written here from the reference layout,
and over real UDP, including a receiver that is down and comes back."""
from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Callable

import numpy as np
import pytest

from emotalk_stream.streamer.frames import OutFrame, neutral_frame
from emotalk_stream.streamer.head_motion import REST, Motion, Rotation
from emotalk_stream.streamer.livelink import LiveLinkSink, encode_packet
from emotalk_stream.training.blendshapes import INDEX, LIVELINK_UDP_ORDER, ROTATIONS, camel
from emotalk_stream.training.errors import UserError
from livelink_decoder import decode
from waiting import free_port, wait_for


def weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(52).astype(np.float32)  # all distinct: misplacements show


def frame(index: int, fps: int = 60) -> OutFrame:
    return OutFrame(index, index / fps, fps, weights(index))


@pytest.fixture
def receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    yield sock
    sock.close()


def test_packet_layout_field_by_field() -> None:
    w = weights(1)
    subject, device = "Émo 😀", "0123456789ABCDEF0123456789ABCDEF0123"
    packet = encode_packet(w, 1234, 60, subject, device)
    got = decode(packet)
    assert got["version"] == 6 and got["device"] == device and got["subject"] == subject
    assert got["frame"] == 1234 and got["sub_frame"] == 0.0 and got["rate"] == (60, 1)
    assert got["count"] == 61
    # Lengths are UTF-8 bytes, not characters: the subject has 5 characters but 9 bytes.
    n = len(subject.encode())
    assert n == 9 and len(packet) == 270 + len(device) + n
    assert packet[:5] == b"\x06\x00\x00\x00\x24" and packet[41:45] == struct.pack(">i", n)


def test_values_sit_at_their_unreal_indices_by_name() -> None:
    w = weights(2)
    values = decode(encode_packet(w, 0, 30, "S", "D"))["values"]
    # Unreal's EARFaceBlendShape indices, from the reference; the CSV swaps these pairs.
    for index, name in ((15, "jawLeft"), (16, "jawRight"), (21, "mouthLeft"), (22, "mouthRight"),
                        (0, "eyeBlinkLeft"), (17, "jawOpen"), (51, "tongueOut")):
        assert values[index] == w[INDEX[name]], name
    for j, name in enumerate(LIVELINK_UDP_ORDER[:52]):
        assert values[j] == w[INDEX[camel(name)]], name
    assert LIVELINK_UDP_ORDER[52:] == ROTATIONS and not values[52:].any()


def test_head_and_eye_angles_go_after_the_shapes_in_degrees_over_180(receiver: socket.socket) -> None:
    motion = Motion(head=Rotation(pitch=2.7, yaw=-4.5, roll=1.8), eyes=Rotation(pitch=-3.6, yaw=5.4))
    sink = LiveLinkSink("127.0.0.1", receiver.getsockname()[1])
    sink.open()
    try:
        sink.submit(OutFrame(0, 0.0, 30, weights(3), motion=motion))
        sink.submit(OutFrame(1, 1 / 30, 30, weights(4), motion=Motion(head=None, eyes=motion.eyes)))  # head off
        sink.submit(OutFrame(2, 2 / 30, 30, weights(5)))  # no motion at all (emotalk-serve's frames)
        got = [decode(receiver.recv(2048))["values"] for _ in range(3)]
    finally:
        sink.close(neutral_frame(3, 30, Motion(REST, REST)))
    last = decode(receiver.recv(2048))["values"]
    by_name = [dict(zip(LIVELINK_UDP_ORDER, values.tolist())) for values in got]
    expected = {"HeadYaw": -4.5, "HeadPitch": 2.7, "HeadRoll": 1.8, "LeftEyeYaw": 5.4, "LeftEyePitch": -3.6,
                "LeftEyeRoll": 0.0, "RightEyeYaw": 5.4, "RightEyePitch": -3.6, "RightEyeRoll": 0.0}
    for name, degrees in expected.items():
        assert by_name[0][name] == pytest.approx(degrees / 180, abs=1e-7), name
        assert by_name[1][name] == (0.0 if name.startswith("Head") else pytest.approx(degrees / 180, abs=1e-7))
    assert not got[2][52:].any() and not last.any()
    assert by_name[0]["JawOpen"] == weights(3)[INDEX["jawOpen"]]  # the shapes where they were


def test_subject_must_be_short_and_not_empty() -> None:
    assert LiveLinkSink("127.0.0.1", 11111, "é" * 32).subject == "é" * 32  # 64 bytes
    for bad in ("", "   ", "é" * 33, "x" * 65):
        with pytest.raises(UserError, match="subject"):
            LiveLinkSink("127.0.0.1", 11111, bad)


def test_device_id_is_a_stable_uuid_per_subject() -> None:
    a, b = LiveLinkSink("127.0.0.1", 1, "Anna"), LiveLinkSink("127.0.0.1", 1, "Anna")
    assert a.device_id == b.device_id and len(a.device_id) == 36 and a.device_id.count("-") == 4
    assert LiveLinkSink("127.0.0.1", 1, "Ben").device_id != a.device_id


def test_unresolvable_host_is_a_user_error() -> None:
    sink = LiveLinkSink("no-such-host.invalid", 11111)
    with pytest.raises(UserError, match=r"cannot resolve host 'no-such-host.invalid'.*--livelink"):
        sink.open()


def test_round_trip_over_udp_ends_with_the_neutral_frame(receiver: socket.socket) -> None:
    sink = LiveLinkSink("127.0.0.1", receiver.getsockname()[1], subject="Anna")
    sink.open()
    try:
        for i in range(5):
            sink.submit(frame(i, fps=30))
        got = [decode(receiver.recv(2048)) for _ in range(5)]
    finally:
        sink.close(neutral_frame(5, 30))
    assert [g["frame"] for g in got] == list(range(5))
    assert {g["subject"] for g in got} == {"Anna"} and {g["device"] for g in got} == {sink.device_id}
    assert {g["rate"] for g in got} == {(30, 1)}
    for i, g in enumerate(got):
        assert g["values"][17] == weights(i)[INDEX["jawOpen"]]
    last = decode(receiver.recv(2048))
    assert last["frame"] == 5 and not last["values"].any()
    assert sink.sent == 6 and sink.errors == 0 and sink.drops == 0


def test_receiver_down_then_up_never_raises_and_resumes() -> None:
    port = free_port()  # nobody listens: Linux answers with ICMP, a later send fails
    sink = LiveLinkSink("127.0.0.1", port)
    sink.open()
    indices = itertools.count()
    try:
        def sent_one_more(check: Callable[[], bool]) -> Callable[[], bool]:
            def step() -> bool:
                sink.submit(frame(next(indices)))
                return check()
            return step

        wait_for(sent_one_more(lambda: sink.errors >= 2))  # keeps going after the first failure
        # Read before the receiver exists: a frame still in the sink's thread may go out (and be
        # counted) the moment it binds, and that one counts as resumed too.
        sent_before = sink.sent
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as late:
            late.bind(("127.0.0.1", port))
            late.setblocking(False)
            received: list[dict] = []

            def got_one() -> bool:
                try:
                    received.append(decode(late.recv(2048)))
                except BlockingIOError:
                    return False
                return True

            wait_for(sent_one_more(got_one))
        # the sink's thread counts a datagram after sendto returns, which may be after it arrived
        wait_for(lambda: sink.sent > sent_before)
        assert received[0]["frame"] >= 2 and received[0]["count"] == 61
    finally:
        sink.close()
