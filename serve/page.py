"""The live demo page at `/` and the files it loads, all from this package: the page, its script,
its style and the microphone's AudioWorklet from serve/static/, the face, the controls' form and
the look from the stream viewer (streamer/viewer/, the viewer's `SHARED` files), so one script
draws the face and one builds the controls on both servers. Request paths are looked up in
`FILES`, never joined to a folder."""
from __future__ import annotations

import functools
from importlib import resources

from ..streamer import websocket_sink
from ..streamer.websocket_sink import content_type_of

# No inline script or style, and nothing from elsewhere; the socket goes to this same server.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:"
OWN = {"/": "demo.html", "/demo.js": "demo.js", "/demo.css": "demo.css", "/capture.js": "capture.js"}
# path -> (package, folder, file name)
FILES = {**{path: (__package__, "static", name) for path, name in OWN.items()},
         **{path: (websocket_sink.__package__, "viewer", name) for path, name in websocket_sink.SHARED.items()}}


def asset(path: str) -> tuple[str, bytes] | None:
    """(Content-Type, body) of the file served at `path`; None for any other path."""
    return _read(*FILES[path]) if path in FILES else None


@functools.cache
def _read(package: str, folder: str, name: str) -> tuple[str, bytes]:
    return content_type_of(name), resources.files(package).joinpath(folder, name).read_bytes()

