"""iFacialMocap out: datagrams read by a decoder written here from the app's published grammar (and
as VMagicMirror's receiver reads it), over real UDP, from the sink and from the command."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotalk_stream.streamer.address import parse_address
from emotalk_stream.streamer.cli import build_parser
from emotalk_stream.streamer.frames import OutFrame, neutral_frame
from emotalk_stream.streamer.head_motion import REST, Motion, Rotation
from emotalk_stream.streamer.ifacialmocap import DEFAULT_PORT, IFM_NAMES, Pose, encode, pose_of
from emotalk_stream.streamer.ifacialmocap_sink import IFacialMocapSink
from emotalk_stream.streamer.launch import parse_outputs
from emotalk_stream.training.blendshapes import INDEX, NAMES, camel
from emotalk_stream.training.errors import UserError

SAMPLE = Path(__file__).resolve().parent.parent / "training" / "assets" / "sample.wav"


def decode(datagram: bytes) -> dict:
    """{"shapes": {name: int}, "head": [6 floats], "rightEye": [3], "leftEye": [3]}, or AssertionError.

    The grammar: `NAME-INT|` per blendshape, one `=`, then `NAME#F,F,...|` per transform.
    """
    text = datagram.decode("ascii")
    assert text.count("=") == 1 and text.endswith("|"), text[-80:]
    shape_part, transform_part = text.split("=")
    assert shape_part.endswith("|")
    shapes: dict[str, int] = {}
    for item in shape_part[:-1].split("|"):
        name, value = item.split("-")  # a negative value would make three parts
        assert value.isdigit() and name not in shapes, item
        shapes[name] = int(value)
    transforms = {}
    for item in transform_part[:-1].split("|"):
        name, numbers = item.split("#")
        transforms[name] = [float(n) for n in numbers.split(",")]
    assert set(transforms) == {"head", "rightEye", "leftEye"}, transforms
    return {"shapes": shapes, **transforms}


def weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(52).astype(np.float32)  # all distinct: misplacements show


def test_the_52_shapes_by_ifacialmocap_name_as_whole_percentages() -> None:
    w = weights(1)
    got = decode(encode(w))
    assert len(got["shapes"]) == 52
    for name, value in got["shapes"].items():
        assert value == round(float(w[INDEX[camel(name)]]) * 100), name
    # A side is _L/_R; jawLeft and mouthRight are motions and keep their names (the app's own spelling).
    assert {"eyeBlink_L", "eyeBlink_R", "mouthSmile_R", "browDown_R", "browInnerUp", "cheekSquint_L", "noseSneer_R",
            "jawLeft", "jawRight", "mouthLeft", "mouthRight", "jawOpen", "tongueOut"} <= set(got["shapes"])
    assert not any(name.endswith(("Left", "Right")) and name not in {"jawLeft", "jawRight", "mouthLeft", "mouthRight"}
                   for name in got["shapes"])
    assert sorted(camel(n) for n in IFM_NAMES) == sorted(NAMES)


def test_values_are_clipped_to_0_100_and_rounded() -> None:
    w = np.zeros(52, np.float32)
    w[INDEX["jawOpen"]], w[INDEX["eyeBlinkLeft"]], w[INDEX["mouthClose"]] = 1.7, -0.3, 0.126
    shapes = decode(encode(w))["shapes"]
    assert (shapes["jawOpen"], shapes["eyeBlink_L"], shapes["mouthClose"]) == (100, 0, 13)


def test_head_and_eyes_rest_at_zero_and_carry_a_pose_in_degrees() -> None:
    rest = decode(encode(weights(2)))
    assert rest["head"] == [0.0] * 6 and rest["rightEye"] == [0.0] * 3 and rest["leftEye"] == [0.0] * 3
    pose = Pose(head_rotation=(-21.5, 6.25, 3.0), head_position=(0.01, -0.1, 0.5),
                right_eye=(6.0, 2.5, 0.25), left_eye=(-6.0, -1.5, 0.0))
    got = decode(encode(weights(2), pose))
    assert got["head"] == [-21.5, 6.25, 3.0, 0.01, -0.1, 0.5]
    assert got["rightEye"] == [6.0, 2.5, 0.25] and got["leftEye"] == [-6.0, -1.5, 0.0]


def test_the_sink_sends_one_datagram_per_frame_to_a_real_receiver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        sink = IFacialMocapSink("127.0.0.1", port)
        sink.open()
        frames = [OutFrame(i, i / 30, 30, weights(10 + i)) for i in range(3)] + [neutral_frame(3, 30)]
        for f in frames:
            sink.submit(f)
        received = [decode(receiver.recv(4096)) for _ in frames]
        sink.close()
    assert sink.name == f"ifacialmocap 127.0.0.1:{port}" and sink.sent == 4
    for f, got in zip(frames, received):
        assert got["shapes"] == {n: round(float(f.weights[INDEX[camel(n)]]) * 100) for n in got["shapes"]}
    assert not any(received[-1]["shapes"].values()), "the stream ends on the neutral face"


def test_the_sink_sends_the_frames_head_and_eye_angles_as_arkit_degrees() -> None:
    """ARKit's face-anchor Euler angles, as the app sends them: X pitch (down > 0), Y yaw (to the
    face's own left > 0), Z roll; both eyes alike, no eye roll; the head's position stays 0."""
    motion = Motion(head=Rotation(pitch=2.5, yaw=-4.25, roll=1.75), eyes=Rotation(pitch=-3.5, yaw=5.5))
    frames = [OutFrame(0, 0.0, 30, weights(1), motion=motion),
              OutFrame(1, 1 / 30, 30, weights(2), motion=Motion(head=motion.head, eyes=None)),
              neutral_frame(2, 30, Motion(REST, None))]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sink = IFacialMocapSink("127.0.0.1", receiver.getsockname()[1])
        sink.open()
        for f in frames:
            sink.submit(f)
        received = [decode(receiver.recv(4096)) for _ in frames]
        sink.close()
    assert received[0]["head"] == [2.5, -4.25, 1.75, 0.0, 0.0, 0.0]
    assert received[0]["rightEye"] == received[0]["leftEye"] == [-3.5, 5.5, 0.0]
    assert received[1]["head"][:3] == [2.5, -4.25, 1.75] and received[1]["rightEye"] == [0.0] * 3  # eyes off
    assert received[2]["head"] == [0.0] * 6 and received[2]["leftEye"] == [0.0] * 3
    assert pose_of(None) == Pose()


def test_host_alone_means_port_49983_and_bad_addresses_are_user_errors() -> None:
    assert DEFAULT_PORT == 49983
    assert parse_address("127.0.0.1", "--ifacialmocap", default_port=DEFAULT_PORT) == ("127.0.0.1", 49983)
    assert parse_address("[::1]", "--ifacialmocap", default_port=DEFAULT_PORT) == ("::1", 49983)
    assert parse_address("pc.local:50003", "--ifacialmocap", default_port=DEFAULT_PORT) == ("pc.local", 50003)
    with pytest.raises(UserError, match=r"--ifacialmocap '' is not HOST\[:PORT\], e.g. --ifacialmocap 127.0.0.1:49983"):
        parse_address("", "--ifacialmocap", default_port=DEFAULT_PORT)
    with pytest.raises(UserError, match=r"--ifacialmocap 'pc:0': the port must be a number from 1 to 65535"):
        parse_address("pc:0", "--ifacialmocap", default_port=DEFAULT_PORT)
    with pytest.raises(UserError, match=r"cannot resolve host 'no-such-host.invalid'.*--ifacialmocap"):
        IFacialMocapSink("no-such-host.invalid", DEFAULT_PORT).open()


def test_the_command_line_makes_one_sink_per_ifacialmocap_option() -> None:
    args = build_parser().parse_args(["--wav", str(SAMPLE), "--ifacialmocap", "127.0.0.1",
                                      "--ifacialmocap", "127.0.0.1:50000"])
    sinks = parse_outputs(args).sinks
    assert [(type(s), s.host, s.port) for s in sinks] == [(IFacialMocapSink, "127.0.0.1", 49983),
                                                          (IFacialMocapSink, "127.0.0.1", 50000)]


def test_emotalk_stream_sends_every_frame_of_a_file() -> None:
    info = sf.info(str(SAMPLE))
    count = -(-info.frames * 30 // info.samplerate)  # ceil(N x 30), as offline inference counts (a 16 kHz file)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        datagrams: list[bytes] = []  # read while the command runs: the socket buffer holds only some
        reader = threading.Thread(target=lambda: datagrams.extend(receiver.recv(4096) for _ in range(count + 1)))
        reader.start()
        done = subprocess.run([sys.executable, "-m", "emotalk_stream.streamer.cli", "--wav", str(SAMPLE), "--no-pace",
                               "--ifacialmocap", f"127.0.0.1:{receiver.getsockname()[1]}", "--quiet"],
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        reader.join(10)
    frames = [decode(d) for d in datagrams]
    assert len(frames) == count + 1
    jaw = [f["shapes"]["jawOpen"] for f in frames]
    assert max(jaw) > 20 and not any(frames[-1]["shapes"].values())  # the voice opens the mouth; the stop closes it
