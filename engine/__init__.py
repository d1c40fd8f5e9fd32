"""Streaming inference for emotalk-stream (chunked/causal engine, ONNX/TensorRT backends)."""
