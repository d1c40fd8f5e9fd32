"""What Windows does differently, tried on Linux: `emotalk-serve` on an event loop without
`add_signal_handler`, as Windows' event loops are, still stops cleanly on Ctrl-C."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

from websockets.asyncio.client import connect

from test_serve_websocket import AUDIO, HELLO, RATE, check_frames, frames_of, s16le, until_closed

# emotalk-serve with asyncio's loop made to refuse signal handlers, as Windows' loops do
WINDOWS_LOOP = """
import asyncio, sys

def refuse(*args, **kwargs):
    print("add_signal_handler refused", file=sys.stderr, flush=True)
    raise NotImplementedError

asyncio.SelectorEventLoop.add_signal_handler = refuse
from emotalk_stream.serve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_server_without_loop_signal_handlers_finishes_sessions_on_ctrl_c() -> None:
    process = subprocess.Popen([sys.executable, "-c", WINDOWS_LOOP, "--port", "0", "--no-grpc"],
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"WebSocket sessions at (ws://\S+/v1/stream)", line)
            if found:
                break
        else:
            raise AssertionError(f"emotalk-serve did not start: {''.join(lines)}")

        async def client() -> tuple:
            async with connect(found.group(1)) as ws:  # still talking when Ctrl-C comes
                await ws.send(json.dumps({**HELLO, "frames": "binary"}))
                ready = json.loads(await ws.recv())
                await ws.send(s16le(AUDIO[:RATE]))
                first = await ws.recv()  # the server has the audio
                process.send_signal(signal.SIGINT)
                return ready, [first, *await until_closed(ws)], ws.close_code, ws.close_reason

        ready, messages, code, reason = asyncio.run(asyncio.wait_for(client(), 30))
        assert process.wait(15) == 0
    finally:
        process.kill()
    check_frames(frames_of(messages, ready["emotions"]), 1.0)  # every frame of its audio, then the final one
    assert (code, reason) == (1001, "server shutting down")
    output = "".join(lines) + process.stderr.read()
    assert "add_signal_handler refused" in output  # the fallback was taken
    assert "stopping: finishing 1 session(s)" in output and "Traceback" not in output, output
