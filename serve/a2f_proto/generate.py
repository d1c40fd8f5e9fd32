"""Regenerate the Python code for NVIDIA's A2F-3D protos: `python -m emotalk_stream.serve.a2f_proto.generate`.

protoc names modules after the proto files (`nvidia_ace.a2f.v1.proto` -> `nvidia_ace/a2f/v1_pb2.py`,
imported as the top-level package `nvidia_ace`). A top-level `nvidia_ace` of our own would clash
with NVIDIA's wheels (PyPI `nvidia-ace` is such a package), so the modules are flattened into this
package (`a2f_v1_pb2.py`) and their imports made relative. The descriptors, and so the message
names on the wire and in `Any` type URLs, stay NVIDIA's. Needs grpcio-tools (the `serve` extra's
exact grpcio release); commit the result.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = HERE / "protos"
_IMPORT = re.compile(r"^from nvidia_ace\.([\w.]+) import (\w+) as ", re.MULTILINE)


def flat_name(module: str) -> str:
    """`nvidia_ace.services.a2f_controller.v1_pb2` -> `services_a2f_controller_v1_pb2`."""
    return module.removeprefix("nvidia_ace.").replace(".", "_")


def _relative(match: re.Match[str]) -> str:
    return f"from . import {flat_name(f'nvidia_ace.{match[1]}.{match[2]}')} as "


def generate() -> list[Path]:
    from grpc_tools import protoc  # only here: the server needs grpcio, not the compiler

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/any.proto
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                *sorted(p.name for p in PROTOS.glob("*.proto"))]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for path in sorted(Path(tmp).rglob("*.py")):
            text = path.read_text()
            if path.name.endswith("_grpc.py") and "def add_" not in text:
                continue  # a proto without a service: protoc writes an empty *_grpc module
            module = ".".join(path.relative_to(tmp).with_suffix("").parts)
            target = HERE / f"{flat_name(module)}.py"
            target.write_text(_IMPORT.sub(_relative, text))
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(HERE.parent.parent), file=sys.stderr)
