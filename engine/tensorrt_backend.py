"""The streaming step as a TensorRT 10 engine on an NVIDIA GPU, its state kept in device memory.

Written against the TensorRT 10 Python API and pycuda; it is unverified until tests/test_tensorrt.py
has run on a GPU (TensorRT could not be installed where this was written).

`build_plan` turns the exported ONNX step into a plan for batches of 1..max_streams, in FP16 when
asked with normalisation, softmax and reductions kept in FP32. `TensorRTBackend` runs the plan:
every state tensor has a pool in device memory with a row per stream slot, so a step moves only
the hop of audio and the controls in and the frames out. TensorRT wants 256-byte aligned tensor
addresses and separate input and output buffers, so a step reads a state straight from its pool
when the slots are consecutive and their first row is aligned (otherwise the rows are gathered into
a staging buffer), writes the new state to a staging buffer and copies it back into the pool rows.
That costs one device-to-device copy per state (29 for the default model) and stretch of consecutive
slots after every step, about 1.2 MB per stream: small next to the step, but a launch each.
CUDA graphs are not captured: a graph fixes the shapes, and a step's batch changes from step to step.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from ..training.errors import UserError
from .backends import Backend, contiguous
from .interface import StepInterface, TensorSpec, state_input, state_output

WORKSPACE_BYTES = 1 << 30  # scratch memory TensorRT's kernels may use (1 GiB)
ALIGNMENT = 256  # bytes: TensorRT's requirement for every input and output address
NEEDS = "the tensorrt backend needs TensorRT 10 and pycuda (pip install tensorrt pycuda) and an NVIDIA GPU"


def _runtime() -> tuple[Any, Any]:
    """Import TensorRT and pycuda on first use, so that importing this module never fails."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(f"{NEEDS}: {exc}") from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise UserError(f"{NEEDS}: found TensorRT {trt.__version__}, upgrade it")
    return trt, cuda


def _device_context(cuda: Any) -> Any:
    """The first GPU's primary context, retained for as long as the caller holds it.

    The primary context is the one the CUDA runtime inside TensorRT (and PyTorch) uses, so TensorRT's
    allocations and ours share one context, and TensorRT frees its memory in the right context
    whichever thread drops the last reference.
    """
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as exc:
        raise UserError(f"{NEEDS}: CUDA does not start here ({exc})") from exc
    if count == 0:
        raise UserError(f"{NEEDS}: no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)")
    return cuda.Device(0).retain_primary_context()


@contextmanager
def _current(context: Any) -> Iterator[None]:
    """Make `context` current for the block: the engine may step streams from any thread."""
    context.push()
    try:
        yield
    finally:
        context.pop()


def _graph_inputs(interface: StepInterface) -> list[tuple[str, TensorSpec]]:
    return [(s.name, s) for s in interface.inputs] + [(state_input(s.name), s) for s in interface.states]


def _graph_outputs(interface: StepInterface) -> list[tuple[str, TensorSpec]]:
    return [(s.name, s) for s in interface.outputs] + [(state_output(s.name), s) for s in interface.states]


def _row_bytes(spec: TensorSpec) -> int:
    return prod(spec.shape) * np.dtype(spec.dtype).itemsize


def _parser_error(parser: Any, onnx_path: Path) -> str:
    if parser.num_errors == 0:
        return f"TensorRT cannot parse {onnx_path}: re-export it with emotalk-export"
    error = parser.get_error(0)
    desc = " ".join(str(error.desc()).split())  # one line, whatever the parser wrote
    return (f"TensorRT cannot parse {onnx_path} (node {error.node()}: {desc}): re-export it with this "
            f"emotalk-stream, or export with --backend onnxruntime if this TensorRT lacks the operator")


def _check_names(found: set[str], expected: set[str], path: Path, what: str) -> None:
    if found != expected:
        missing, extra = sorted(expected - found)[:3], sorted(found - expected)[:3]
        raise UserError(f"{path} does not match its manifest ({what}: missing {missing}, unexpected {extra}): "
                        f"re-export the engine with emotalk-export")


def _keep_fp32(trt: Any, network: Any) -> None:
    """Pin normalisation, softmax and float reductions to FP32: their sums of squares and exponentials
    overflow or lose the small differences in FP16, while the matrix products around them are fine."""
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = range(layer.num_outputs)
        if layer.type in kinds and all(layer.get_output(j).dtype == trt.DataType.FLOAT for j in outputs):
            layer.precision = trt.DataType.FLOAT
            for j in outputs:
                layer.set_output_type(j, trt.DataType.FLOAT)


def build_plan(onnx_path: Path, plan_path: Path, interface: StepInterface, max_streams: int, fp16: bool) -> None:
    """Build a TensorRT plan of the ONNX step for batches of 1..max_streams and write it to `plan_path`.

    A plan only runs on the TensorRT version and GPU model that built it, so it is built where it runs.
    """
    trt, cuda = _runtime()
    context = _device_context(cuda)
    logger = trt.Logger(trt.Logger.WARNING)
    with _current(context):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch: the only mode TensorRT 10 has
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            raise UserError(_parser_error(parser, onnx_path))
        found = {network.get_input(i).name for i in range(network.num_inputs)}
        _check_names(found, {name for name, _ in _graph_inputs(interface)}, onnx_path, "inputs")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers in full FP32, to match torch to 1e-3
        profile = builder.create_optimization_profile()
        for name, spec in _graph_inputs(interface):
            profile.set_shape(name, (1, *spec.shape), (max_streams, *spec.shape), (max_streams, *spec.shape))
        config.add_optimization_profile(profile)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            _keep_fp32(trt, network)
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build a plan from {onnx_path} (its log above says why): try "
                        f"without --fp16 or with fewer --max-streams, or export with --backend onnxruntime")
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    try:
        tmp.write_bytes(plan)
        os.replace(tmp, plan_path)
    except OSError as exc:
        raise UserError(f"cannot write the TensorRT plan {plan_path} ({exc}): check the folder is writable") from exc


class TensorRTBackend(Backend):
    """A TensorRT plan on the first GPU: one execution context, one CUDA stream, preallocated buffers."""

    name = "tensorrt"

    def __init__(self, plan_path: Path, interface: StepInterface, max_streams: int):
        super().__init__(interface)
        self.max_batch = max_streams
        self._plan_path = plan_path
        self._trt, self._cuda = _runtime()
        self._context = _device_context(self._cuda)
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        cuda = self._cuda
        with _current(self._context):
            self._runtime = self._trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
            if self._engine is None:
                raise UserError(f"TensorRT cannot load {plan_path} (a plan runs only on the TensorRT version and "
                                f"GPU model that built it): re-export it on this machine with emotalk-export "
                                f"--backend tensorrt")
            self._check_engine(plan_path)
            self._execution = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._state_in = {s.name: cuda.mem_alloc(max_streams * _row_bytes(s)) for s in interface.states}
            self._state_out = {s.name: cuda.mem_alloc(max_streams * _row_bytes(s)) for s in interface.states}
            specs = interface.inputs + interface.outputs
            self._device = {s.name: cuda.mem_alloc(max_streams * _row_bytes(s)) for s in specs}
            self._host = {s.name: cuda.pagelocked_empty((max_streams, *s.shape), np.dtype(s.dtype)) for s in specs}
            # these addresses never change; state inputs are bound per step (pool rows or staging)
            for s in interface.outputs:
                self._bind(s.name, self._device[s.name])
            for s in interface.inputs:
                self._bind(s.name, self._device[s.name])
            for s in interface.states:
                self._bind(state_output(s.name), self._state_out[s.name])

    def spare(self) -> "TensorRTBackend":
        return TensorRTBackend(self._plan_path, self.interface, 1)  # one stream: buffers for one row

    def _check_engine(self, plan_path: Path) -> None:
        """Refuse a plan whose tensors (names, direction, type, shape, batch range) differ from the manifest."""
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs, outputs = dict(_graph_inputs(self.interface)), dict(_graph_outputs(self.interface))
        _check_names(set(names), set(inputs) | set(outputs), plan_path, "tensors")
        dtypes = {"float32": trt.DataType.FLOAT, "int64": trt.DataType.INT64}
        for name in names:
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            expected = inputs if is_input else outputs
            if name not in expected:
                raise UserError(f"{plan_path}: tensor {name} is an {'input' if is_input else 'output'} of the plan "
                                f"but not of the manifest: re-export the engine with emotalk-export")
            spec = expected[name]
            if engine.get_tensor_dtype(name) != dtypes[spec.dtype]:
                raise UserError(f"{plan_path}: tensor {name} is {engine.get_tensor_dtype(name)} in the plan, "
                                f"{spec.dtype} in the manifest: re-export the engine with emotalk-export")
            if tuple(engine.get_tensor_shape(name))[1:] != tuple(spec.shape):
                raise UserError(f"{plan_path}: tensor {name} has shape {tuple(engine.get_tensor_shape(name))} in "
                                f"the plan, (batch, *{spec.shape}) in the manifest: re-export the engine")
            if is_input and engine.get_tensor_profile_shape(name, 0)[2][0] < self.max_batch:
                raise UserError(f"{plan_path} takes fewer than the manifest's {self.max_batch} streams per step: "
                                f"re-export the engine with emotalk-export")

    def _bind(self, name: str, address: Any) -> None:
        if not self._execution.set_tensor_address(name, int(address)):
            raise RuntimeError(f"TensorRT refused the address of tensor {name} (see its log)")

    def _allocate(self, capacity: int) -> None:
        cuda, stream = self._cuda, self._stream
        retired = []
        with _current(self._context):
            for spec in self.interface.states:
                size = _row_bytes(spec)
                pool = cuda.mem_alloc(capacity * size)
                cuda.memset_d8_async(pool, 0, capacity * size, stream)
                if spec.name in self.pools:
                    old = self.pools[spec.name]
                    cuda.memcpy_dtod_async(pool, old, self.capacity * size, stream)
                    retired.append(old)
                self.pools[spec.name] = pool
            stream.synchronize()  # the old pools are freed only once their rows are copied
            for old in retired:
                old.free()

    def reset(self, slot: int) -> None:
        with _current(self._context):
            self.ensure_capacity(slot + 1)
            for spec in self.interface.states:
                size = _row_bytes(spec)
                self._cuda.memset_d8_async(int(self.pools[spec.name]) + slot * size, 0, size, self._stream)

    def run(self, slots: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(slots)
        if n > self.max_batch:
            raise ValueError(f"{n} slots in one step; the plan takes at most {self.max_batch}")
        cuda, stream, execution = self._cuda, self._stream, self._execution
        runs = _runs(slots)
        with _current(self._context):
            for spec in self.interface.inputs:
                host = self._host[spec.name][:n]
                host[...] = inputs[spec.name]
                cuda.memcpy_htod_async(self._device[spec.name], host, stream)
                self._set_shape(spec.name, (n, *spec.shape))
            span = contiguous(slots)
            for spec in self.interface.states:
                size, pool = _row_bytes(spec), int(self.pools[spec.name])
                if span and (span.start * size) % ALIGNMENT == 0:
                    address = pool + span.start * size
                else:
                    address = int(self._state_in[spec.name])
                    for slot, row, count in runs:
                        cuda.memcpy_dtod_async(address + row * size, pool + slot * size, count * size, stream)
                self._bind(state_input(spec.name), address)
                self._set_shape(state_input(spec.name), (n, *spec.shape))
            if not execution.execute_async_v3(stream.handle):
                raise RuntimeError("TensorRT failed to run the step (see its log)")
            for spec in self.interface.outputs:
                cuda.memcpy_dtoh_async(self._host[spec.name][:n], self._device[spec.name], stream)
            for spec in self.interface.states:
                size, pool, new = _row_bytes(spec), int(self.pools[spec.name]), int(self._state_out[spec.name])
                for slot, row, count in runs:
                    cuda.memcpy_dtod_async(pool + slot * size, new + row * size, count * size, stream)
            stream.synchronize()
        # copies: the page-locked buffers are overwritten by the next step
        return {spec.name: self._host[spec.name][:n].copy() for spec in self.interface.outputs}

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._execution.set_input_shape(name, shape):
            raise RuntimeError(f"TensorRT refused shape {shape} for input {name} (see its log)")


def _runs(slots: np.ndarray) -> list[tuple[int, int, int]]:
    """(first slot, first batch row, rows) of each stretch of consecutive slots, for one copy each."""
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(slots)]))
    return [(int(slots[a]), int(a), int(b - a)) for a, b in zip(starts, ends)]
