"""NVIDIA's Audio2Face-3D API (`nvidia_ace.*` protos, Apache-2.0): the .proto files in `protos/`
and the code grpcio-tools generates from them (`python -m emotalk_stream.serve.a2f_proto.generate`).
Provenance and licence: SOURCE.md, LICENSE."""
