"""One load-test client over NVIDIA's Audio2Face-3D API (`A2FControllerService/ProcessAudioStream`),
with the stubs emotalk-serve is generated from (serve/a2f_proto), as an ACE client calls it.

The pacing and timing are the WebSocket client's (loadtest_session.py): the same 20 ms blocks of
16-bit PCM, each an `AudioWithEmotion`, and each frame's `FloatArrayWithTimeCode.time_code` is the
audio time it shows. A2F-3D names no frame rate: frames are at the API's 30 fps, frame round(t x 30).
Each session has its own channel and its own TCP connection, as separate clients would: gRPC
otherwise lets channels to one address share a connection, which put every session on one worker
of `emotalk-serve --workers N` (its workers share the port by connection).
"""
from __future__ import annotations

import asyncio
import time

import grpc

from ..serve.a2f_proto import a2f_v1_pb2 as a2f
from ..serve.a2f_proto import audio_v1_pb2 as audio
from ..serve.a2f_proto import controller_v1_pb2 as controller
from ..serve.a2f_proto import services_a2f_controller_v1_pb2_grpc as services
from ..serve.a2f_proto import status_v1_pb2 as status
from ..training.audio import SAMPLE_RATE
from .loadtest_session import SILENCE_S, Plan, SessionResult, Speech, finish, paced_blocks

A2F_FPS = 30
HEADER = controller.AudioStream(audio_stream_header=controller.AudioStreamHeader(audio_header=audio.AudioHeader(
    audio_format=audio.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1, samples_per_second=SAMPLE_RATE,
    bits_per_sample=16)))
END = controller.AudioStream(end_of_audio=controller.AudioStream.EndOfAudio())
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a channel of its own, not one shared by address


def rpc_problem(address: str, error: grpc.aio.AioRpcError) -> str | None:
    """One line naming why the setup is wrong and the fix, or None for a busy or failing server."""
    code, said = error.code(), error.details()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"the server refused the token (UNAUTHENTICATED: {said}): pass the server's token with --token"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot connect to the gRPC server at {address} ({said}): start emotalk-serve there or fix --grpc"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (f"{address} does not serve A2FControllerService/ProcessAudioStream ({said}): give emotalk-serve's "
                f"--grpc-port")
    return None


class GrpcClient:
    """One session per call of ProcessAudioStream."""

    def __init__(self, address: str, token: str | None, speech: Speech):
        self.address = address
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.speech = speech

    async def run(self, plan: Plan, result: SessionResult) -> None:
        """Fill `result` as the session goes (the command reports progress from it)."""
        async with grpc.aio.insecure_channel(self.address, options=OWN_CONNECTION) as channel:
            call = services.A2FControllerServiceStub(channel).ProcessAudioStream(metadata=self.metadata)
            try:
                await call.write(HEADER)
                receiving = asyncio.create_task(self._receive(call, result))
                await self._send(call, plan, result)
                await finish(receiving, result)
            except grpc.aio.AioRpcError as exc:
                self._ended(exc, result)
            except TimeoutError:
                result.outcome = "failed"
                result.reason = f"no frame and no status for {SILENCE_S:.0f} s after the end of audio"
                call.cancel()

    async def _send(self, call: grpc.aio.StreamStreamCall, plan: Plan, result: SessionResult) -> None:
        try:
            async for block in paced_blocks(self.speech, plan, result):
                await call.write(controller.AudioStream(audio_with_emotion=a2f.AudioWithEmotion(audio_buffer=block)))
            await call.write(END)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended: the receiver has its status

    async def _receive(self, call: grpc.aio.StreamStreamCall, result: SessionResult) -> None:
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                arrival = time.monotonic()
                part = message.WhichOneof("stream_part")
                if part == "animation_data_stream_header":
                    result.ready = {"fps": A2F_FPS, "names": list(
                        message.animation_data_stream_header.skel_animation_header.blend_shapes)}
                elif part == "animation_data":
                    for weights in message.animation_data.skel_animation.blend_shape_weights:
                        result.frames.append((round(weights.time_code * A2F_FPS), weights.time_code, arrival))
                elif part == "status":
                    ok = message.status.code == status.Status.SUCCESS
                    result.outcome = "completed" if ok and result.ready else "failed"
                    result.reason = None if ok else f"status {message.status.code}: {message.status.message}"
        except grpc.aio.AioRpcError as exc:
            self._ended(exc, result)

    def _ended(self, exc: grpc.aio.AioRpcError, result: SessionResult) -> None:
        refused = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        result.outcome = "refused" if refused else "failed"
        result.reason = f"{exc.code().name}: {exc.details()}"
        result.fatal = rpc_problem(self.address, exc)
