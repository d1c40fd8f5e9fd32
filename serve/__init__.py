"""`emotalk-serve`: many speakers on one batched engine, over WebSocket (and NVIDIA's A2F-3D gRPC API)."""
