"""NVIDIA Audio2Face-3D (NIM API v2) compatible gRPC front end of `emotalk-serve`.

Clients written for A2F-3D (NVIDIA's sample applications, the ACE plugins for Unreal and Maya)
call `nvidia_ace.services.a2f_controller.v1.A2FControllerService/ProcessAudioStream` on us
unchanged: they send an `AudioStreamHeader`, `AudioWithEmotion` messages (16-bit PCM, optional
timecoded emotions) and `EndOfAudio`; each call is one session of the shared `SessionHub`, and
they get back an `AnimationDataStreamHeader` (the 52 ARKit names in A2F's order and spelling), one
`AnimationData` per frame as it is decoded (weights, the audio it shows, the emotion aggregate), the
`END_OF_A2F_AUDIO_PROCESSING` event and a `Status`. Refusals are gRPC status codes with a reason.
What is honoured and what ignored: docs/serving-grpc.md.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import hmac
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from ..engine import Controls
from ..streamer.frames import OutFrame
from ..streamer.resample import StreamingResampler
from ..training.audio import MAX_RATE, MAX_RESAMPLE_KERNEL, MIN_RATE, SAMPLE_RATE
from ..training.blendshapes import COUNT, INDEX, LIVELINK_UDP_ORDER, camel
from ..training.errors import UserError
from .a2f_emotions import EmotionMap
from .a2f_proto import a2f_v1_pb2 as a2f_pb
from .a2f_proto import animation_data_v1_pb2 as anim
from .a2f_proto import audio_v1_pb2 as audio_pb
from .a2f_proto import controller_v1_pb2 as ctrl
from .a2f_proto import emotion_aggregate_v1_pb2 as aggregate_pb
from .a2f_proto import emotion_with_timecode_v1_pb2 as timecode_pb
from .a2f_proto import services_a2f_controller_v1_pb2_grpc as service_pb
from .a2f_proto import status_v1_pb2 as status_pb
from .hub import STALL_S, Session, SessionHub, SessionRefused

log = logging.getLogger(__name__)

SERVICE = "nvidia_ace.services.a2f_controller.v1.A2FControllerService"
DEFAULT_PORT = 52000  # A2F-3D NIM's
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's usual limit, both ways: 2 min of 16 kHz audio in one message
IDLE_S = 60.0  # default: a call that sends nothing for this long is ended, and its session slot freed
# Audio fed ahead of the last frame sent, at most. Clients that send faster than real time (whole
# files) are read only as the frames come back: the backlog stays bounded, and timecoded emotions
# take effect within this much of their time even then (within a hop or two in real time). Far
# below the hub's MAX_BACKLOG_S, so the hub never refuses audio from here.
AHEAD_S = 0.5
FEED_S = 0.1  # audio is fed in pieces of at most this, so AHEAD_S holds for any message size
# A refused call reads what the client still sends, this long at most, before its status goes out:
# grpcio's asyncio client reports INTERNAL, not the server's status, when a write meets a finished call.
DRAIN_S = 1.0
MAX_KEYFRAMES = 1000  # timecoded emotions waiting for their time, per call

# A2F-3D's 52 names and order: the ARKit shapes as Unreal's EARFaceBlendShape lists them (the order
# nvidia_ace.a2f.v1.proto lists for bs_weight_multipliers), in PascalCase.
BLENDSHAPES: tuple[str, ...] = LIVELINK_UDP_ORDER[:COUNT]
_FROM_ENGINE = np.array([INDEX[camel(name)] for name in BLENDSHAPES])
_POSITION = {name: i for i, name in enumerate(BLENDSHAPES)}


class _Refusal(Exception):
    """Ends a call with a gRPC status code and a reason the client can act on."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


@dataclasses.dataclass(frozen=True)
class _Keyframe:
    """Input emotions from `time` on (seconds of audio): A2F's names as sent, and our control."""

    time: float
    emotions: dict[str, float]
    setting: str | None  # LABEL:STRENGTH, or None for the session's own emotion setting


class _Shaping:
    """A2F's blendshape parameters: weight x multiplier + offset, clamped to [0, 1] on request."""

    def __init__(self, params: a2f_pb.BlendShapeParameters):
        self.gain = np.ones(COUNT, dtype=np.float32)
        self.offset = np.zeros(COUNT, dtype=np.float32)
        for table, values in ((self.gain, params.bs_weight_multipliers), (self.offset, params.bs_weight_offsets)):
            for name, value in values.items():
                if not math.isfinite(value):
                    raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"blendshape parameter {name} = {value}")
                if name in _POSITION:  # others (NIM 2.0's extra tongue shapes) we do not output
                    table[_POSITION[name]] = value
        self.clamp = params.enable_clamping_bs_weight
        self.identity = not (self.gain != 1).any() and not self.offset.any()

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        out = weights[_FROM_ENGINE]
        if not self.identity:
            out = out * self.gain + self.offset
        return np.clip(out, 0.0, 1.0) if self.clamp else out


def check_audio_header(header: audio_pb.AudioHeader) -> None:
    """Refuse audio we cannot decode, naming the field (`_Refusal` INVALID_ARGUMENT)."""
    rate = header.samples_per_second
    common = math.gcd(rate, SAMPLE_RATE)
    problem = None
    if header.audio_format != audio_pb.AudioHeader.AUDIO_FORMAT_PCM:
        problem = f"audio_format {header.audio_format}: only AUDIO_FORMAT_PCM is supported"
    elif header.channel_count != 1:
        problem = f"channel_count {header.channel_count}: only mono audio (1 channel) is supported"
    elif header.bits_per_sample != 16:
        problem = f"bits_per_sample {header.bits_per_sample}: only 16-bit PCM is supported"
    elif not (MIN_RATE <= rate <= MAX_RATE and (rate // common) * (SAMPLE_RATE // common) <= MAX_RESAMPLE_KERNEL):
        problem = (f"samples_per_second {rate}: use a standard rate from {MIN_RATE} to {MAX_RATE} Hz "
                   f"(16000 advised)")
    if problem:
        raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"AudioStreamHeader.audio_header: {problem}")


class _Call:
    """One ProcessAudioStream call: reads audio into its session while frames go back out."""

    def __init__(self, hub: SessionHub, header: ctrl.AudioStreamHeader, emotions: EmotionMap, idle_s: float):
        self.hub, self.emotions, self.idle_s = hub, emotions, idle_s
        self.audio_header = header.audio_header
        self.rate = header.audio_header.samples_per_second
        self.shaping = _Shaping(header.blendshape_params)
        self.resampler = StreamingResampler(self.rate, SAMPLE_RATE)
        self.session: Session | None = None
        self.base: Controls | None = None  # the session's controls before any input emotion
        self.pending: list[_Keyframe] = []  # not yet reached by the audio, by time
        self.applied: deque[_Keyframe] = deque()  # reached by the audio, not yet by the frames sent
        self.showing: _Keyframe | None = None  # the input emotions of the last frame sent
        self.received = 0  # input samples
        self.carry = b""  # an odd byte, until its pair arrives
        self.echo = bytearray()  # the input PCM not yet sent back, from sample `echo_start`
        self.echo_start = 0
        self.shown = 0.0  # audio time up to which frames have been sent
        self.progress = asyncio.Event()
        self.refusal: _Refusal | None = None
        self.input_done = False  # the client's EndOfAudio (or half-close) reached the session
        self.start_time = time.time()
        beginning = dict(header.emotion_params.beginning_emotion)
        if beginning:
            self.add_keyframe(0.0, beginning)

    def open(self) -> Session:
        try:
            self.session = self.hub.open(motion=False)  # A2F-3D frames have no head or eyes
        except SessionRefused as exc:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.reason) from None
        self.base = self.session.controls
        self.apply_due()
        return self.session

    # -- input side --

    def add_keyframe(self, time_code: float, emotions: dict[str, float]) -> None:
        try:
            setting = self.emotions.override(emotions)
        except UserError as exc:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"emotions at {time_code:.3f} s: {exc}") from None
        if len(self.pending) >= MAX_KEYFRAMES:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                           f"more than {MAX_KEYFRAMES} timecoded emotions ahead of the audio")
        keyframe = _Keyframe(max(0.0, time_code), emotions, setting)
        bisect.insort(self.pending, keyframe, key=lambda k: k.time)

    def apply_due(self) -> None:
        """Switch to the input emotions whose time the audio has reached (those past included)."""
        now = self.received / self.rate
        while self.pending and self.pending[0].time <= now + 1e-9:
            keyframe = self.pending.pop(0)
            controls = self.base if keyframe.setting is None else dataclasses.replace(self.base, emotion=keyframe.setting)
            try:
                self.session.set_controls(controls)
            except UserError as exc:
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"emotions at {keyframe.time:.3f} s: {exc}") from None
            self.applied.append(dataclasses.replace(keyframe, time=max(keyframe.time, now)))

    async def read(self, requests: AsyncIterator[ctrl.AudioStream]) -> None:
        """Audio and emotions into the session until EndOfAudio (or the client half-closes)."""
        try:
            stream = requests.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.idle_s):
                        message = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _Refusal(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"nothing received for {self.idle_s:g} s: send audio or EndOfAudio") from None
                part = message.WhichOneof("stream_part")
                if part == "end_of_audio":
                    break
                if part != "audio_with_emotion":
                    raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                                   "after the AudioStreamHeader send only AudioWithEmotion messages and EndOfAudio"
                                   if part else "an empty AudioStream message")
                for keyframe in message.audio_with_emotion.emotions:
                    self.add_keyframe(keyframe.time_code, dict(keyframe.emotion))
                await self.feed(message.audio_with_emotion.audio_buffer)
            self.session.feed(self.resampler.flush())
            self.session.finish()
            self.input_done = True
        except _Refusal as exc:
            self.refusal = exc
        except UserError:  # audio after the hub itself ended the input: the server is stopping
            return  # the session's last frames still go out
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong ends this call alone
            log.exception("A2F-3D session %s: reading failed", self.session.id)
            self.refusal = _Refusal(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        if self.refusal is not None:
            self.session.close(self.refusal.details)

    async def feed(self, buffer: bytes) -> None:
        data = self.carry + buffer
        usable = len(data) - len(data) % 2
        self.carry = data[usable:]
        self.echo += data[:usable]
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        piece = max(1, int(FEED_S * self.rate))
        position = 0
        while position < len(samples):
            self.apply_due()
            while self.received / self.rate - self.shown > AHEAD_S:
                self.progress.clear()
                await self.progress.wait()
            end = min(len(samples), position + piece)
            if self.pending:  # stop at the next emotion's time, to switch there
                end = min(end, max(position + 1, math.ceil(self.pending[0].time * self.rate) - self.received + position))
            self.session.feed(self.resampler.process(samples[position:end]))
            self.received += end - position
            position = end
        self.apply_due()

    # -- output side --

    def stream_header(self) -> ctrl.AnimationDataStream:
        return ctrl.AnimationDataStream(animation_data_stream_header=ctrl.AnimationDataStreamHeader(
            audio_header=self.audio_header,
            skel_animation_header=anim.SkelAnimationHeader(blend_shapes=BLENDSHAPES),
            start_time_code_since_epoch=self.start_time))

    def animation_data(self, frame: OutFrame) -> ctrl.AnimationDataStream:
        weights = self.shaping(frame.weights)
        data = anim.AnimationData(
            skel_animation=anim.SkelAnimation(blend_shape_weights=[
                anim.FloatArrayWithTimeCode(time_code=frame.time, values=weights.tolist())]),
            audio=anim.AudioWithTimeCode(time_code=frame.time, audio_buffer=self.echoed(frame)))
        data.metadata["emotion_aggregate"].Pack(self.aggregate(frame))
        return ctrl.AnimationDataStream(animation_data=data)

    def echoed(self, frame: OutFrame) -> bytes:
        """The input PCM this frame shows (all the rest with the final frame): each sample once."""
        end = len(self.echo) // 2 + self.echo_start if frame.final else round((frame.index + 1) * self.rate / frame.fps)
        count = min(max(0, end - self.echo_start), len(self.echo) // 2)
        out = bytes(self.echo[:2 * count])
        del self.echo[:2 * count]
        self.echo_start += count
        return out

    def aggregate(self, frame: OutFrame) -> aggregate_pb.EmotionAggregate:
        """Input emotions, our emotion network's output and the emotions shown, by A2F's names."""
        while self.applied and self.applied[0].time <= frame.time + 1e-9:
            self.showing = self.applied.popleft()
        keyframe = self.showing
        probabilities = self.session.emotion_probabilities()
        setting = keyframe.setting if keyframe and keyframe.setting else self.hub.engine.emotion_setting(self.base)

        def timed(values: dict[str, float]) -> list[timecode_pb.EmotionWithTimeCode]:
            return [timecode_pb.EmotionWithTimeCode(time_code=frame.time, emotion=values)]

        return aggregate_pb.EmotionAggregate(
            input_emotions=timed(keyframe.emotions) if keyframe else [],
            a2e_output=timed(self.emotions.to_a2f(probabilities)) if probabilities else [],
            a2f_smoothed_output=timed(self.emotions.in_effect(setting, probabilities)))

    def sent(self, frame: OutFrame) -> None:
        """Frame `frame` is on its way: the reader may feed up to AHEAD_S past it."""
        self.shown = (frame.index + 1) / frame.fps
        self.progress.set()


class A2FControllerService(service_pb.A2FControllerServiceServicer):
    """ProcessAudioStream on the hub; every call is authenticated, then one session."""

    def __init__(self, hub: SessionHub, token: str | None, idle_s: float = IDLE_S):
        self.hub, self.token, self.idle_s = hub, token, idle_s
        self.emotions = EmotionMap(hub.engine.cfg.emotion_labels, hub.engine.prototype_labels)

    async def ProcessAudioStream(self, requests: AsyncIterator[ctrl.AudioStream],  # noqa: N802 - NVIDIA's name
                                 context: grpc.aio.ServicerContext) -> None:
        call: _Call | None = None
        reader: asyncio.Task | None = None
        try:
            self.authenticate(context)
            call = _Call(self.hub, await self.first_header(requests), self.emotions, self.idle_s)
            session = call.open()
            log.info("A2F-3D session %s from %s (%d Hz)", session.id, context.peer(), call.rate)
            await self.write(context, call.stream_header())
            reader = asyncio.create_task(call.read(requests), name=f"A2F-3D reader {session.id}")
            ended = False
            async for frame in session.frames():
                await self.write(context, call.animation_data(frame))
                call.sent(frame)
                ended = frame.final
            if not ended:  # the reader refused the input, or the hub dropped the session
                raise call.refusal or _Refusal(grpc.StatusCode.ABORTED, session.error or "the session was closed")
            if not call.input_done:  # the hub finished the session before the client did: shutdown
                raise _Refusal(grpc.StatusCode.UNAVAILABLE, f"the server is shutting down: audio after "
                                                            f"{call.received / call.rate:.2f} s was not processed")
            await self.write(context, ctrl.AnimationDataStream(
                event=ctrl.Event(event_type=ctrl.EventType.END_OF_A2F_AUDIO_PROCESSING)))
            await self.write(context, ctrl.AnimationDataStream(status=status_pb.Status(
                code=status_pb.Status.SUCCESS, message="all audio processed")))
        except _Refusal as exc:
            log.info("A2F-3D call from %s ends with %s: %s", context.peer(), exc.code.name, exc.details)
            self.end(call, reader, exc.details)
            await self.drain(requests)
            await context.abort(exc.code, exc.details)
        finally:  # also on the client's cancellation
            self.end(call, reader, "A2F-3D call ended")

    @staticmethod
    def end(call: _Call | None, reader: asyncio.Task | None, reason: str) -> None:
        """Stop reading and free the session's slot at once (the call's status may wait for the client)."""
        if reader is not None:
            reader.cancel()
        if call is not None and call.session is not None:
            call.session.close(reason)

    def authenticate(self, context: grpc.aio.ServicerContext) -> None:
        if self.token is None:
            return
        sent = next((value for key, value in context.invocation_metadata() or () if key == "authorization"), "")
        scheme, _, token = str(sent).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED,
                           "missing or wrong token: send metadata 'authorization: Bearer TOKEN'")

    async def first_header(self, requests: AsyncIterator[ctrl.AudioStream]) -> ctrl.AudioStreamHeader:
        try:
            async with asyncio.timeout(self.idle_s):
                first = await anext(requests.__aiter__())
        except StopAsyncIteration:
            first = None
        except TimeoutError:
            raise _Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, f"no AudioStreamHeader within {self.idle_s:g} s") from None
        if first is None or first.WhichOneof("stream_part") != "audio_stream_header":
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                           "the first message must be an AudioStream with audio_stream_header (AudioStreamHeader)")
        header = first.audio_stream_header
        if not header.HasField("audio_header"):
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the AudioStreamHeader has no audio_header")
        check_audio_header(header.audio_header)
        return header

    @staticmethod
    async def drain(requests: AsyncIterator[ctrl.AudioStream]) -> None:
        """Read and drop the client's messages until EndOfAudio, its half-close or DRAIN_S."""
        with contextlib.suppress(Exception):  # a call that is gone: nothing to drain
            async with asyncio.timeout(DRAIN_S):
                async for message in requests:
                    if message.WhichOneof("stream_part") == "end_of_audio":
                        return

    @staticmethod
    async def write(context: grpc.aio.ServicerContext, message: ctrl.AnimationDataStream) -> None:
        """Send one message; a client that stops reading for STALL_S loses its call, not the others' time."""
        try:
            async with asyncio.timeout(STALL_S):
                await context.write(message)
        except TimeoutError:
            raise _Refusal(grpc.StatusCode.ABORTED, f"stopped reading for {STALL_S:g} s") from None


async def start_grpc(hub: SessionHub, host: str, port: int, token: str | None,
                     tls: tuple[Path, Path] | None, *, idle_s: float = IDLE_S, shared_port: bool = False) -> grpc.aio.Server:
    """The A2F-3D service and gRPC health checking, started on host:port (TLS with (cert, key));
    a call that sends nothing for `idle_s` seconds is ended. `shared_port`: the server's worker
    processes each listen on the port (SO_REUSEPORT; the command checked that it was free).

    Call from the hub's event loop; `UserError` with one line when the port cannot be had."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", int(shared_port)),  # else a second server binds a port in use without an error
    ])
    service_pb.add_A2FControllerServiceServicer_to_server(A2FControllerService(hub, token, idle_s), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            server.add_insecure_port(address)
        else:
            cert, key = tls
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)  # gRPC's own error says less
            server.add_secure_port(address, grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    except OSError as exc:  # missing file, or ssl.SSLError
        raise UserError(f"TLS certificate {tls[0]} and key {tls[1]}: not a PEM certificate and its key ({exc})") from None
    except RuntimeError:
        raise UserError(f"cannot listen for gRPC on {address}: the port is in use or the address is not "
                        f"this machine's (choose another with --grpc-port)") from None
    await server.start()
    return server
