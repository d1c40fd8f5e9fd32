"""emotalk-serve's WebSocket protocol with real sockets and the real `websockets` client: sessions
in both frame forms, any PCM format, tokens, limits and refusals, and the command itself."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emotalk_stream.engine import Engine
from emotalk_stream.serve import protocol, websocket_server
from emotalk_stream.serve.cli import main as serve_main, ssl_context
from emotalk_stream.serve.hub import SessionHub
from emotalk_stream.serve.websocket_server import EXTRA_CONNECTIONS, StreamServer
from emotalk_stream.streamer.resample import StreamingResampler
from emotalk_stream.training.audio import read_audio
from emotalk_stream.training.blendshapes import INDEX, NAMES

ROOT = Path(__file__).resolve().parent.parent
AUDIO = read_audio(ROOT / "training" / "assets" / "sample.wav")  # 5 s of real speech at 16 kHz
RATE = 16000
FPS = 30
HELLO = {"type": "hello", "sample_rate": RATE, "format": "s16le", "channels": 1}


def s16le(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def serving(engine: Engine, body: Callable[[StreamServer], Awaitable[object]], *, max_streams: int = 4,
            **options: object) -> object:
    """`body(server)` against a server on a free port, shut down afterwards; 30 s at most."""
    async def main() -> object:
        hub = SessionHub(engine, max_streams=max_streams)
        await hub.start()
        server = StreamServer(hub, "127.0.0.1", 0, **options)
        await server.start()
        try:
            return await asyncio.wait_for(body(server), 30)
        finally:
            server.stop_accepting()
            await hub.stop()
            await server.close()
    return asyncio.run(main())


async def until_closed(ws: ClientConnection) -> list[str | bytes]:
    """Every message until the server closes the connection."""
    messages = []
    try:
        async for message in ws:
            messages.append(message)
    except ConnectionClosed:
        pass
    return messages


async def session(url: str, hello: dict, pcm: bytes, block: int,
                  between: Callable[[ClientConnection], Awaitable[None]] | None = None, **connect_options: object
                  ) -> tuple[dict, list[str | bytes], int, str]:
    """One whole session: hello, the PCM in `block`-byte messages (`between` runs halfway), end;
    returns the ready message, every later message, the close code and reason."""
    async with connect(url, **connect_options) as ws:
        await ws.send(json.dumps(hello))
        ready = json.loads(await ws.recv())
        reader = asyncio.create_task(until_closed(ws))
        blocks = [pcm[i:i + block] for i in range(0, len(pcm), block)]
        for i, data in enumerate(blocks):
            if between is not None and i == len(blocks) // 2:
                await between(ws)
            await ws.send(data)
        await ws.send(json.dumps({"type": "end"}))
        messages = await reader
        return ready, messages, ws.close_code, ws.close_reason


async def refusal(url: str, *messages: str | bytes) -> tuple[int, str]:
    """Send `messages`, then wait for the server to close: (code, reason)."""
    async with connect(url) as ws:
        for message in messages:
            await ws.send(message)
        await until_closed(ws)
        return ws.close_code, ws.close_reason


def frames_of(messages: list[str | bytes], emotions: list[str]) -> list[protocol.DecodedFrame]:
    return [protocol.decode_frame(m, emotions) for m in messages]


def check_frames(frames: list[protocol.DecodedFrame], seconds: float) -> None:
    count = -(-round(seconds * 16000) * FPS // 16000)  # ceil(N x fps) of the 16 kHz samples, as offline
    assert [f.index for f in frames] == list(range(count + 1))
    assert all(f.time == pytest.approx(f.index / FPS, abs=1e-6) for f in frames)
    assert [f.final for f in frames] == [False] * count + [True]
    assert not frames[-1].weights.any() and all(f.emotion is not None for f in frames[:-1])


def test_a_session_with_json_frames_and_controls(engine: Engine) -> None:
    async def between(ws: ClientConnection) -> None:
        await ws.send(json.dumps({"type": "controls", "emotion": "sad", "gain": {"brows": 1.5}, "blink": False}))
        await ws.send(json.dumps({"type": "controls", "emotion": "bored"}))

    async def body(server: StreamServer) -> tuple:
        return await session(server.url, {**HELLO, "controls": {"emotion": "happy:0.7", "level": "high"}},
                             s16le(AUDIO[:2 * RATE]), 640, between)

    ready, messages, code, _ = serving(engine, body)
    assert ready["type"] == "ready" and re.fullmatch(r"[0-9a-f]{16}", ready["session"])
    assert (ready["fps"], ready["hop_ms"], ready["lookahead_ms"]) == (FPS, engine.hop_ms, engine.lookahead_ms)
    assert ready["names"] == list(NAMES) and ready["emotions"] == list(engine.cfg.emotion_labels)
    assert (ready["controls"]["emotion"], ready["controls"]["level"]) == ("happy:0.7", 1.0)  # the hello's, in effect
    errors = [json.loads(m) for m in messages if '"type":"error"' in m]
    assert len(errors) == 1 and "bored" in errors[0]["reason"]  # refused, and the session went on
    text = [m for m in messages if '"type":"error"' not in m]
    first, last = json.loads(text[0]), json.loads(text[-1])
    assert set(first) == {"type", "frame", "time", "fps", "weights", "head", "eyes", "emotion", "final"}
    assert list(first["weights"]) == list(NAMES)
    # speech-driven head and eye motion, as the streamer's: the head moves while the voice speaks,
    # and the final frame rests
    pitches = [json.loads(m)["head"]["pitch"] for m in text]
    assert max(pitches) - min(pitches) > 0.5 and last["final"]
    assert last["head"] == {"pitch": 0.0, "yaw": 0.0, "roll": 0.0} and last["eyes"] == {"pitch": 0.0, "yaw": 0.0}
    frames = frames_of(text, ready["emotions"])
    check_frames(frames, 2.0)
    assert max(f.weights[INDEX["jawOpen"]] for f in frames) > 0.1
    assert code == 1000


def test_binary_frames_from_48khz_stereo_equal_those_of_the_same_audio_sent_at_16khz(engine: Engine) -> None:
    upsampler, downsampler = StreamingResampler(RATE, 48000), StreamingResampler(48000, RATE)
    wide = np.concatenate([upsampler.process(AUDIO[:3 * RATE]), upsampler.flush()])
    stereo = s16le(np.stack([wide, 0.5 * wide], axis=1).reshape(-1))
    mixed = np.frombuffer(stereo, "<i2").reshape(-1, 2).astype(np.float32).mean(axis=1) / 32768
    narrow = np.concatenate([downsampler.process(mixed), downsampler.flush()])  # what the server should hear
    no_blinks = {"controls": {"blink": False}}  # blink timing differs between sessions
    hello = {**HELLO, **no_blinks, "sample_rate": 48000, "channels": 2, "frames": "binary"}

    async def body(server: StreamServer) -> tuple:
        return await asyncio.gather(
            session(server.url, hello, stereo, 1920),  # 10 ms blocks
            session(server.url, {**HELLO, **no_blinks, "format": "f32le"}, narrow.astype("<f4").tobytes(), 4000))

    (ready, messages, code, _), (_, reference, _, _) = serving(engine, body)
    assert all(isinstance(m, bytes) and len(m) == protocol.BINARY_FRAME.size for m in messages)
    frames = frames_of(messages, ready["emotions"])
    check_frames(frames, 3.0)
    assert code == 1000
    served = np.stack([f.weights for f in frames])
    assert served[:, INDEX["jawOpen"]].max() > 0.1
    np.testing.assert_allclose(served, np.stack([f.weights for f in frames_of(reference, ready["emotions"])]),
                               atol=1e-4)  # the JSON form rounds to 4 decimals


def test_a_token_is_required_by_header_or_query(engine: Engine) -> None:
    async def body(server: StreamServer) -> None:
        pcm = s16le(AUDIO[:RATE // 2])
        for url, headers, reason in ((server.url, None, "token required"),
                                     (server.url + "?token=wrong", None, "wrong token"),
                                     (server.url, {"Authorization": "Bearer nope"}, "wrong token")):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401 and reason in refused.value.response.body.decode()
        for url, headers in ((server.url + "?token=s3cret", None), (server.url, {"Authorization": "Bearer s3cret"})):
            ready, messages, code, _ = await session(url, HELLO, pcm, 640, additional_headers=headers)
            assert ready["type"] == "ready" and code == 1000 and len(messages) == 16

    serving(engine, body, token="s3cret")


def test_http_routes_stats_and_health(engine: Engine) -> None:
    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    async def body(server: StreamServer) -> dict[str, tuple[int, str]]:
        base = server.page_url
        await session(server.url + "?token=t0k", HELLO, s16le(AUDIO[:RATE]), 640)
        paths = ("health", "stats", "stats?token=t0k", "", "nothing")
        return dict(zip(paths, await asyncio.gather(*(asyncio.to_thread(get, base + p) for p in paths))))

    answers = serving(engine, body, token="t0k")
    assert answers["health"] == (200, "ok\n")
    assert answers["stats"][0] == 401 and "token required" in answers["stats"][1]
    status, text = answers["stats?token=t0k"]
    stats = json.loads(text)
    assert status == 200 and set(stats) == {"sessions", "max_streams", "steps", "frames", "cpu_seconds", "uptime_s",
                                            "refused", "dropped"}
    assert stats["frames"] == 31 and stats["max_streams"] == 4 and stats["cpu_seconds"] > 0
    assert answers[""][0] == 200 and "/v1/stream" in answers[""][1]
    assert answers["nothing"][0] == 404


def test_beyond_max_streams_a_session_is_closed_1013(engine: Engine) -> None:
    async def body(server: StreamServer) -> tuple[int, str]:
        async with connect(server.url) as first:
            await first.send(json.dumps(HELLO))
            assert json.loads(await first.recv())["type"] == "ready"
            return await refusal(server.url, json.dumps(HELLO))

    assert serving(engine, body, max_streams=1) == (1013, "server full (1 of 1 sessions): try again later")


@pytest.mark.parametrize("messages, code, reason", [
    (["not json"], 1008, "the hello is not a JSON object"),
    ([b"\x00\x01" * 320], 1008, "audio before the hello"),
    ([json.dumps({"type": "controls"})], 1008, 'the first message must be {"type":"hello"'),
    ([json.dumps({**HELLO, "format": "mp3"})], 1003, "format 'mp3': use s16le or f32le"),
    ([json.dumps({**HELLO, "sample_rate": 200000})], 1003, "sample_rate 200000"),
    ([json.dumps({**HELLO, "channels": 6})], 1003, "channels 6: send 1 or 2"),
    ([json.dumps({**HELLO, "rate": 16000})], 1008, "unknown hello field 'rate'"),
    ([json.dumps({**HELLO, "controls": {"emotion": "bored"}})], 1008, "bored"),
    ([json.dumps(HELLO), b"\x00" * 3], 1003, "PCM block of 3 bytes is not whole s16le mono samples"),
    ([json.dumps(HELLO), json.dumps({"type": "bye"})], 1008, "message type 'bye'"),
    ([json.dumps(HELLO), b"\x00" * (protocol.MAX_MESSAGE_BYTES + 2)], 1009, ""),
])
def test_bad_input_closes_with_a_code_and_a_reason(engine: Engine, messages: list, code: int, reason: str) -> None:
    async def body(server: StreamServer) -> tuple[int, str]:
        return await refusal(server.url, *messages)

    got_code, got_reason = serving(engine, body)
    assert got_code == code and reason in got_reason, (got_code, got_reason)


def test_an_idle_client_is_closed_1001(engine: Engine) -> None:
    async def body(server: StreamServer) -> list[tuple[int, str]]:
        return await asyncio.gather(refusal(server.url), refusal(server.url, json.dumps(HELLO), s16le(AUDIO[:3200])))

    silent, stopped = serving(engine, body, idle_timeout=0.5)
    assert silent == (1001, "idle: no hello for 0.5 s")
    assert stopped == (1001, "idle: no audio or message for 0.5 s")


def test_a_flood_of_connections_is_refused_503_and_sessions_go_on(engine: Engine) -> None:
    async def body(server: StreamServer) -> tuple:
        async with connect(server.url) as first:
            await first.send(json.dumps(HELLO))
            await first.recv()
            flood = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2 + EXTRA_CONNECTIONS + 2)]
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url):
                    pass
            await first.send(s16le(AUDIO[:RATE]))
            await first.send(json.dumps({"type": "end"}))
            messages = await until_closed(first)
            for _, writer in flood:
                writer.close()
            return refused.value.response, messages, first.close_code

    response, messages, code = serving(engine, body, max_streams=1)
    assert response.status_code == 503 and b"too many connections" in response.body
    check_frames(frames_of(messages, list(engine.cfg.emotion_labels)), 1.0)
    assert code == 1000


def test_a_client_that_never_reads_is_cut_off_while_another_session_goes_on(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket_server, "STALL_S", 1.0)

    async def body(server: StreamServer) -> tuple:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        raw.connect(("127.0.0.1", server.port))
        # Never calls recv(); without compression 300 JSON frames are about 500 KB, far more than the buffers hold.
        async with connect(server.url, sock=raw, max_queue=1, compression=None, close_timeout=0.1) as stalled:
            await stalled.send(json.dumps(HELLO))
            await stalled.send(s16le(np.concatenate([AUDIO, AUDIO])))
            reading = await session(server.url, HELLO, s16le(AUDIO[:2 * RATE]), 640)
            while server.hub.sessions:  # the stalled one goes after 1 s without a send, long before it is idle
                await asyncio.sleep(0.05)
            return reading, server.hub.stats()

    (ready, messages, code, _), stats = serving(engine, body, idle_timeout=60)
    check_frames(frames_of(messages, ready["emotions"]), 2.0)
    assert code == 1000 and stats["sessions"] == 0


def test_tls_serves_wss(engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    trust = ssl.create_default_context(cafile=cert)

    async def body(server: StreamServer) -> tuple:
        assert server.url.startswith("wss://") and server.page_url.startswith("https://")
        return await session(server.url, HELLO, s16le(AUDIO[:RATE]), 640, ssl=trust)

    ready, messages, code, _ = serving(engine, body, ssl_context=ssl_context((cert, key)))
    check_frames(frames_of(messages, ready["emotions"]), 1.0)
    assert code == 1000
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert serve_main(["--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", str(key)]) == 2
    assert "not a PEM certificate and its key" in capsys.readouterr().err


# -- the command --

def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`emotalk-serve` on a free port; returns the process and its WebSocket URL, read from its output."""
    process = subprocess.Popen([sys.executable, "-m", "emotalk_stream.serve.cli", "--port", "0", "--no-grpc", *args],
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"WebSocket sessions at (ws://\S+/v1/stream)", line)
        if found:
            return process, found.group(1)
    raise AssertionError(f"emotalk-serve did not start: {''.join(lines)}")


def test_the_command_serves_clients_and_stops_cleanly_on_sigterm(engine: Engine) -> None:
    process, url = start_server("--token", "abc", "--max-streams", "2")
    try:
        async def clients() -> tuple:
            done = await session(url + "?token=abc", HELLO, s16le(AUDIO[:RATE]), 640)
            async with connect(url + "?token=abc") as ws:  # this one is still talking when the server stops
                await ws.send(json.dumps({**HELLO, "frames": "binary"}))
                ready = json.loads(await ws.recv())
                await ws.send(s16le(AUDIO[:RATE]))
                first = await ws.recv()  # the server has the audio
                process.send_signal(signal.SIGTERM)
                messages = [first, *await until_closed(ws)]
                return done, ready, messages, ws.close_code, ws.close_reason

        done, ready, messages, code, reason = asyncio.run(asyncio.wait_for(clients(), 30))
        assert process.wait(15) == 0
    finally:
        process.kill()
    check_frames(frames_of(done[1], done[0]["emotions"]), 1.0)
    assert done[2] == 1000
    check_frames(frames_of(messages, ready["emotions"]), 1.0)  # every frame of its audio, then the final one
    assert (code, reason) == (1001, "server shutting down")
    output = process.stderr.read()
    assert "stopping: finishing 1 session(s)" in output and "Traceback" not in output


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "--tls-cert missing.pem: no such file"),
    (["--token", "two words"], "--token must be printable ASCII without spaces"),
    (["--max-streams", "0"], "--max-streams 0: give 1 or more"),
    (["--grpc-port", "52001", "--no-grpc"], "--grpc-port and --no-grpc contradict each other"),
    (["--port", "70000"], "--port 70000: give a port from 1 to 65535"),
    (["--engine", "nowhere", "--no-grpc"], "--engine nowhere is not an engine artifact"),
    (["--port", "{busy}", "--no-grpc"], "the port is in use"),
    (["--workers", "0"], "--workers 0: give 1 or more"),
    (["--workers", "2", "--ray"], "--workers is for the plain server; on Ray give --replicas"),
    (["--workers", "2", "--port", "{busy}", "--no-grpc"], "--port {busy}: the port is in use"),
    (["--workers", "2", "--grpc-port", "{busy}"], "--grpc-port {busy}: the port is in use"),
])
def test_bad_command_lines_exit_2_with_one_line(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = [a.replace("{busy}", str(busy.getsockname()[1])) for a in args]
        message = message.replace("{busy}", str(busy.getsockname()[1]))
        assert serve_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("emotalk-serve: error: ") and message in err, err
