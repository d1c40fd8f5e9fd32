"""The A2F-3D gRPC front end with a real grpcio client on the stubs an A2F-3D client uses
(generated from NVIDIA's protos): the bundled engine behind a SessionHub, sample.wav streamed as
NVIDIA's sample client streams it (header, ~35 ms chunks of 16-bit PCM, EndOfAudio)."""
from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emotalk_stream.engine import Engine
from emotalk_stream.serve import a2f_grpc, a2f_proto
from emotalk_stream.serve.a2f_emotions import A2F_EMOTIONS, TO_A2F, EmotionMap
from emotalk_stream.serve.a2f_grpc import BLENDSHAPES, SERVICE, start_grpc
from emotalk_stream.serve.a2f_proto import a2f_v1_pb2 as a2f
from emotalk_stream.serve.a2f_proto import audio_v1_pb2 as audio
from emotalk_stream.serve.a2f_proto import controller_v1_pb2 as ctrl
from emotalk_stream.serve.a2f_proto import emotion_aggregate_v1_pb2 as aggregate
from emotalk_stream.serve.a2f_proto import emotion_with_timecode_v1_pb2 as timecode
from emotalk_stream.serve.a2f_proto import services_a2f_controller_v1_pb2_grpc as service
from emotalk_stream.serve.hub import SessionHub
from emotalk_stream.training.blendshapes import NAMES, camel
from emotalk_stream.training.errors import UserError
from waiting import free_port

CHUNK_S = 0.035
TOKEN = "s3cret-token"
SAMPLE = resources.files("emotalk_stream.training.assets") / "sample.wav"
pytestmark = pytest.mark.usefixtures("time_limit")


def sample_pcm() -> tuple[np.ndarray, int]:
    pcm, rate = sf.read(str(SAMPLE), dtype="int16")
    return pcm, rate


@dataclass
class Reply:
    """What one call got back."""

    code: grpc.StatusCode
    details: str
    messages: list[ctrl.AnimationDataStream] = field(default_factory=list)

    def parts(self) -> list[str]:
        return [m.WhichOneof("stream_part") for m in self.messages]

    @property
    def data(self) -> list:
        return [m.animation_data for m in self.messages if m.HasField("animation_data")]

    def weights(self) -> np.ndarray:
        """(frames, 52) in the header's order."""
        return np.array([d.skel_animation.blend_shape_weights[0].values for d in self.data])

    def times(self) -> np.ndarray:
        return np.array([d.skel_animation.blend_shape_weights[0].time_code for d in self.data])

    def aggregates(self) -> list[aggregate.EmotionAggregate]:
        out = []
        for d in self.data:
            unpacked = aggregate.EmotionAggregate()
            assert d.metadata["emotion_aggregate"].Unpack(unpacked)
            out.append(unpacked)
        return out


def header_message(rate: int = 16000, channels: int = 1, bits: int = 16, **params) -> ctrl.AudioStream:
    return ctrl.AudioStream(audio_stream_header=ctrl.AudioStreamHeader(
        audio_header=audio.AudioHeader(audio_format=audio.AudioHeader.AUDIO_FORMAT_PCM, channel_count=channels,
                                       samples_per_second=rate, bits_per_sample=bits), **params))


def audio_messages(pcm: np.ndarray, rate: int, emotions: list[tuple[float, dict[str, float]]] = ()) -> list[ctrl.AudioStream]:
    """As NVIDIA's sample client: timecoded emotions with the first chunk, EndOfAudio last."""
    step = round(CHUNK_S * rate)
    out = [ctrl.AudioStream(audio_with_emotion=a2f.AudioWithEmotion(
        audio_buffer=pcm[i:i + step].tobytes(),
        emotions=[timecode.EmotionWithTimeCode(time_code=t, emotion=e) for t, e in emotions] if i == 0 else []))
        for i in range(0, len(pcm), step)]
    return out + [ctrl.AudioStream(end_of_audio=ctrl.AudioStream.EndOfAudio())]


async def call(channel: grpc.aio.Channel, messages: list[ctrl.AudioStream], metadata=None,
               on_message: Callable[[ctrl.AnimationDataStream], Awaitable[None]] | None = None) -> Reply:
    """One ProcessAudioStream: write every message while reading the replies to the end."""
    rpc = service.A2FControllerServiceStub(channel).ProcessAudioStream(metadata=metadata)

    async def write() -> None:
        try:
            for message in messages:
                await rpc.write(message)
            await rpc.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the server ended the call early: its status says why

    writer = asyncio.create_task(write())
    reply = await read_all(rpc, on_message)
    await writer
    return reply


async def read_all(rpc: grpc.aio.StreamStreamCall,
                   on_message: Callable[[ctrl.AnimationDataStream], Awaitable[None]] | None = None) -> Reply:
    """Every reply message, then the status (which comes only after them)."""
    reply = Reply(grpc.StatusCode.UNKNOWN, "")
    try:
        while (message := await rpc.read()) != grpc.aio.EOF:
            reply.messages.append(message)
            if on_message is not None:
                await on_message(message)
    except grpc.aio.AioRpcError:
        pass
    reply.code, reply.details = await rpc.code(), await rpc.details()
    return reply


@asynccontextmanager
async def serving(engine: Engine, max_streams: int = 4, token: str | None = None, idle_s: float = 60.0):
    """A hub and the gRPC server on a free port; yields (hub, channel, port)."""
    hub = SessionHub(engine, max_streams=max_streams)
    await hub.start()
    port = free_port(socket.SOCK_STREAM)
    server = await start_grpc(hub, "127.0.0.1", port, token, None, idle_s=idle_s)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield hub, channel, port
    finally:
        await server.stop(None)
        await hub.stop()


def run(coroutine: Awaitable) -> object:
    return asyncio.run(coroutine)


def a2f_proto_names() -> list[str]:
    """The 52 names NVIDIA's a2f.v1.proto lists for the blendshape parameters, in its order."""
    text = (Path(a2f_proto.__file__).parent / "protos" / "nvidia_ace.a2f.v1.proto").read_text()
    block = text.split("The following blendshape can be used here as key:")[1].split("// Note1")[0]
    return re.findall(r'"(\w+)"', block)


def test_sample_streams_like_a2f(engine: Engine) -> None:
    pcm, rate = sample_pcm()

    async def scenario() -> tuple[Reply, int]:
        async with serving(engine) as (hub, channel, _):
            return await call(channel, [header_message(rate)] + audio_messages(pcm, rate)), hub.fps

    reply, fps = run(scenario())
    assert reply.code == grpc.StatusCode.OK, reply.details
    parts = reply.parts()
    assert parts[0] == "animation_data_stream_header" and parts[-2:] == ["event", "status"]
    assert set(parts[1:-2]) == {"animation_data"}
    assert reply.messages[-2].event.event_type == ctrl.EventType.END_OF_A2F_AUDIO_PROCESSING
    assert reply.messages[-1].status.code == reply.messages[-1].status.SUCCESS

    header = reply.messages[0].animation_data_stream_header
    names = list(header.skel_animation_header.blend_shapes)
    assert names == list(BLENDSHAPES) == a2f_proto_names() and len(names) == 52
    assert all(n[0].isupper() for n in names) and sorted(camel(n) for n in names) == sorted(NAMES)
    assert header.audio_header.samples_per_second == rate and header.start_time_code_since_epoch > 0

    times, weights = reply.times(), reply.weights()
    assert np.allclose(np.diff(times), 1 / fps) and times[0] == 0.0
    assert times[-1] >= len(pcm) / rate - 1 / fps  # every frame of the audio, then the final one
    assert weights.shape == (len(times), 52) and not weights[-1].any()  # the final frame is the rest pose
    jaw = weights[:, names.index("JawOpen")]
    assert jaw.max() > 0.15 and jaw[:3].max() < jaw.max() / 3  # speech opens the jaw; the leading silence not
    # The audio comes back once, whole, in the header's format, each chunk with its frame.
    assert b"".join(d.audio.audio_buffer for d in reply.data) == pcm.tobytes()
    aggregates = reply.aggregates()
    assert all(a.a2f_smoothed_output and a.a2f_smoothed_output[0].time_code == t for a, t in zip(aggregates, times))
    assert not aggregates[-1].input_emotions  # none sent
    voice = [a for a in aggregates if a.a2e_output]
    assert voice and set(voice[-1].a2e_output[0].emotion) <= set(A2F_EMOTIONS)


def test_input_emotions_change_the_face_at_their_time(engine: Engine) -> None:
    pcm, rate = sample_pcm()
    switch = 2.5

    async def scenario() -> tuple[Reply, Reply, Reply]:
        async with serving(engine) as (_, channel, _):
            plain = await call(channel, [header_message(rate)] + audio_messages(pcm, rate))
            joyful = await call(channel, [header_message(rate)] + audio_messages(pcm, rate, [(0.0, {"joy": 1.0})]))
            later = await call(channel, [header_message(rate)]
                               + audio_messages(pcm, rate, [(switch, {"anger": 0.9, "pain": 1.0})]))
            return plain, joyful, later

    plain, joyful, later = run(scenario())
    for reply in (plain, joyful, later):
        assert reply.code == grpc.StatusCode.OK, reply.details
    names = list(BLENDSHAPES)
    smile = [names.index("MouthSmileLeft"), names.index("MouthSmileRight")]
    assert joyful.weights()[:-1, smile].mean() > plain.weights()[:-1, smile].mean() + 0.05
    joy = joyful.aggregates()[10]
    assert dict(joy.input_emotions[0].emotion) == {"joy": 1.0}
    assert dict(joy.a2f_smoothed_output[0].emotion) == pytest.approx({"joy": 1.0})

    # pain has no counterpart here, so anger (the strongest mappable) is the override, from 2.5 s on.
    times, aggregates = later.times(), later.aggregates()
    before, after = times < switch - 1e-6, times >= switch
    assert not any(a.input_emotions for a, b in zip(aggregates, before) if b)
    assert all(dict(a.a2f_smoothed_output[0].emotion) == pytest.approx({"anger": 0.9})
               for a, b in zip(aggregates[:-1], after[:-1]) if b)
    mouth_brows = [i for i, n in enumerate(names) if not n.startswith("Eye")]  # blinks differ per session
    difference = np.abs(later.weights() - plain.weights())[:, mouth_brows].max(axis=1)
    assert difference[times < switch - 0.6].max() < 1e-3  # the same face until shortly before the switch
    assert difference[times > switch + 0.3].mean() > 0.02


def test_blendshape_multipliers_and_offsets(engine: Engine) -> None:
    pcm, rate = sample_pcm()
    params = a2f.BlendShapeParameters(bs_weight_multipliers={"JawOpen": 0.0, "TongueTipUp": 2.0},
                                      bs_weight_offsets={"BrowInnerUp": 0.9, "MouthClose": -0.5},
                                      enable_clamping_bs_weight=True)

    async def scenario() -> Reply:
        async with serving(engine) as (_, channel, _):
            return await call(channel, [header_message(rate, blendshape_params=params)] + audio_messages(pcm[:rate], rate))

    reply = run(scenario())
    assert reply.code == grpc.StatusCode.OK, reply.details
    weights, names = reply.weights(), list(BLENDSHAPES)
    assert not weights[:, names.index("JawOpen")].any()
    assert (weights[:, names.index("BrowInnerUp")] >= 0.9).all() and weights.max() <= 1.0
    assert (weights[:, names.index("MouthClose")] == 0.0).all()  # clamped at 0


def test_refusals_name_the_problem(engine: Engine) -> None:
    pcm, rate = sample_pcm()
    body = audio_messages(pcm[:rate // 2], rate)

    async def scenario() -> dict[str, Reply]:
        async with serving(engine, token=TOKEN) as (hub, channel, _):
            good = [("authorization", f"Bearer {TOKEN}")]
            replies = {
                "no token": await call(channel, [header_message(rate)] + body),
                "wrong token": await call(channel, [header_message(rate)] + body, [("authorization", "Bearer nope")]),
                "no header": await call(channel, body, good),
                "nothing": await call(channel, [], good),
                "stereo": await call(channel, [header_message(rate, channels=2)] + body, good),
                "24-bit": await call(channel, [header_message(rate, bits=24)] + body, good),
                "odd rate": await call(channel, [header_message(16001)] + body, good),
                "two headers": await call(channel, [header_message(rate)] * 2 + body, good),
                "bad emotion": await call(channel, [header_message(rate)]
                                          + audio_messages(pcm[:rate // 2], rate, [(0.0, {"happiness": 1.0})]), good),
                "emotion > 1": await call(channel, [header_message(rate)]
                                          + audio_messages(pcm[:rate // 2], rate, [(0.0, {"joy": 2.0})]), good),
                "good": await call(channel, [header_message(rate)] + body, good),
            }
            assert hub.sessions == 0
            return replies

    replies = run(scenario())
    expected = {
        "no token": (grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer"),
        "wrong token": (grpc.StatusCode.UNAUTHENTICATED, "wrong token"),
        "no header": (grpc.StatusCode.INVALID_ARGUMENT, "first message must be"),
        "nothing": (grpc.StatusCode.INVALID_ARGUMENT, "first message must be"),
        "stereo": (grpc.StatusCode.INVALID_ARGUMENT, "channel_count 2"),
        "24-bit": (grpc.StatusCode.INVALID_ARGUMENT, "bits_per_sample 24"),
        "odd rate": (grpc.StatusCode.INVALID_ARGUMENT, "samples_per_second 16001"),
        "two headers": (grpc.StatusCode.INVALID_ARGUMENT, "only AudioWithEmotion"),
        "bad emotion": (grpc.StatusCode.INVALID_ARGUMENT, "unknown emotion 'happiness'"),
        "emotion > 1": (grpc.StatusCode.INVALID_ARGUMENT, "values go from 0 to 1"),
        "good": (grpc.StatusCode.OK, ""),
    }
    for name, (code, words) in expected.items():
        assert (replies[name].code, words in replies[name].details) == (code, True), (name, replies[name].details)
    assert replies["no token"].messages == [] and replies["good"].parts()[-1] == "status"


def test_full_server_refuses_with_resource_exhausted_and_busy_streams_finish(engine: Engine) -> None:
    pcm, rate = sample_pcm()

    async def scenario() -> tuple[Reply, Reply]:
        async with serving(engine, max_streams=1) as (_, channel, _):
            opened = asyncio.Event()
            release = asyncio.Event()

            async def on_message(message: ctrl.AnimationDataStream) -> None:
                if message.HasField("animation_data_stream_header"):
                    opened.set()
                    await release.wait()  # hold the only session open while the second call comes

            first = asyncio.create_task(call(channel, [header_message(rate)] + audio_messages(pcm[:rate], rate),
                                             on_message=on_message))
            await opened.wait()
            second = await call(channel, [header_message(rate)] + audio_messages(pcm[:rate], rate))
            release.set()
            return await first, second

    first, second = run(scenario())
    assert second.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "server full" in second.details
    assert first.code == grpc.StatusCode.OK and first.parts()[-2:] == ["event", "status"]


def test_concurrent_streams_complete_and_a_cancelled_one_frees_its_slot(engine: Engine) -> None:
    pcm, rate = sample_pcm()
    pcm44 = np.round(np.interp(np.arange(round(len(pcm) * 44100 / rate)) * rate / 44100,
                               np.arange(len(pcm)), pcm)).astype(np.int16)

    async def scenario() -> tuple[list[Reply], int]:
        async with serving(engine, max_streams=3) as (hub, channel, _):
            cancelled = service.A2FControllerServiceStub(channel).ProcessAudioStream()
            await cancelled.write(header_message(rate))
            assert (await cancelled.read()).HasField("animation_data_stream_header")
            cancelled.cancel()
            replies = await asyncio.gather(call(channel, [header_message(rate)] + audio_messages(pcm, rate)),
                                           call(channel, [header_message(44100)] + audio_messages(pcm44, 44100)))
            for _ in range(100):
                if hub.sessions == 0:
                    break
                await asyncio.sleep(0.02)
            return replies, hub.sessions

    replies, left = run(scenario())
    assert left == 0
    for reply, (samples, rate_in) in zip(replies, ((pcm, rate), (pcm44, 44100))):
        assert reply.code == grpc.StatusCode.OK, reply.details
        assert reply.times()[-1] >= len(samples) / rate_in - 1 / 30
        assert b"".join(d.audio.audio_buffer for d in reply.data) == samples.tobytes()
    assert np.abs(replies[0].weights() - replies[1].weights()).mean() < 0.05  # 44.1 kHz is resampled


def test_health_checking_and_a_port_in_use(engine: Engine) -> None:
    async def scenario() -> list[int]:
        async with serving(engine) as (hub, channel, port):
            stub = health_pb2_grpc.HealthStub(channel)
            statuses = [(await stub.Check(health_pb2.HealthCheckRequest(service=name))).status for name in ("", SERVICE)]
            with pytest.raises(UserError, match="in use"):
                await start_grpc(hub, "127.0.0.1", port, None, None)
            return statuses

    assert run(scenario()) == [health_pb2.HealthCheckResponse.SERVING] * 2


def test_emotion_tables() -> None:
    ours = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
    table = EmotionMap(ours, ours)
    assert table.override({"joy": 0.4, "cheekiness": 0.6, "pain": 1.0}) == "happy:0.600"
    assert table.override({"outofbreath": 1.0}) is None and table.override({}) is None
    assert table.to_a2f({"neutral": 0.5, "happy": 0.3, "sad": 0.2}) == pytest.approx({"joy": 0.3, "sadness": 0.2})
    assert table.in_effect("calm", None) == {} and table.in_effect("sad:0.5", None) == {"sadness": 0.5}
    assert set(TO_A2F.values()) <= set(A2F_EMOTIONS)
    official = EmotionMap(("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"), ())
    assert official.override({"anger": 1.0}) is None  # no prototypes: input emotions cannot steer it
    assert official.to_a2f({"surprise": 1.0, "fear": 0.5}) == {"amazement": 1.0, "fear": 0.5}


def test_idle_oversized_and_non_reading_clients_end_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(a2f_grpc, "STALL_S", 1.0)
    pcm, rate = sample_pcm()
    oversized = ctrl.AudioStream(audio_with_emotion=a2f.AudioWithEmotion(audio_buffer=bytes(a2f_grpc.MAX_MESSAGE_BYTES)))

    async def scenario() -> tuple[Reply, Reply, Reply, int]:
        async with serving(engine, idle_s=0.5) as (hub, channel, port):
            # A client that never reads: a small HTTP/2 window (no BDP probing) fills in a second.
            options = [("grpc.http2.bdp_probe", 0)]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as stuck_channel:
                stuck = service.A2FControllerServiceStub(stuck_channel).ProcessAudioStream()

                async def write_only() -> None:
                    for message in [header_message(rate)] + audio_messages(np.tile(pcm, 4), rate):
                        await stuck.write(message)  # blocks once the server stops reading it

                writer = asyncio.create_task(write_only())
                idle = service.A2FControllerServiceStub(channel).ProcessAudioStream()
                await idle.write(header_message(rate))
                big = await call(channel, [header_message(rate), oversized])
                normal = await call(channel, [header_message(rate)] + audio_messages(pcm, rate))
                idle_reply = await read_all(idle)
                for _ in range(200):
                    if hub.sessions == 0:
                        break
                    await asyncio.sleep(0.02)
                stuck.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await writer
                return idle_reply, big, normal, hub.sessions

    idle, big, normal, left = run(scenario())
    assert idle.code == grpc.StatusCode.DEADLINE_EXCEEDED and "nothing received for" in idle.details
    assert big.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert normal.code == grpc.StatusCode.OK and normal.times()[-1] >= len(pcm) / rate - 1 / 30
    assert left == 0  # the stuck client's session is gone although its call still waits for it


def test_tls(engine: Engine, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    pcm, rate = sample_pcm()

    async def scenario() -> Reply:
        hub = SessionHub(engine)
        await hub.start()
        port = free_port(socket.SOCK_STREAM)
        server = await start_grpc(hub, "127.0.0.1", port, TOKEN, (cert, key))
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                return await call(channel, [header_message(rate)] + audio_messages(pcm[:rate], rate),
                                  [("authorization", f"Bearer {TOKEN}")])
        finally:
            await server.stop(None)
            await hub.stop()

    reply = run(scenario())
    assert reply.code == grpc.StatusCode.OK and reply.parts()[-1] == "status"


def test_shutdown_sends_the_frames_so_far_then_unavailable(engine: Engine) -> None:
    pcm, rate = sample_pcm()

    async def scenario() -> Reply:
        hub = SessionHub(engine)
        await hub.start()
        port = free_port(socket.SOCK_STREAM)
        server = await start_grpc(hub, "127.0.0.1", port, None, None)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                rpc = service.A2FControllerServiceStub(channel).ProcessAudioStream()
                for message in [header_message(rate)] + audio_messages(pcm[:rate], rate)[:-1]:  # no EndOfAudio
                    await rpc.write(message)
                stopping = None

                async def on_message(message: ctrl.AnimationDataStream) -> None:
                    nonlocal stopping
                    if message.HasField("animation_data") and stopping is None:
                        stopping = asyncio.create_task(hub.stop())  # Ctrl-C while the client still talks

                reply = await read_all(rpc, on_message)
                await stopping
                return reply
        finally:
            await server.stop(None)

    reply = run(scenario())
    assert reply.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in reply.details
    taken = float(re.search(r"audio after ([\d.]+) s", reply.details)[1])  # read so far (0.5 s ahead of the frames)
    assert 0 < taken < 1.0 and reply.times()[-1] >= taken - 1 / 30  # a frame for all of it,
    assert not reply.weights()[-1].any()  # then the rest pose
