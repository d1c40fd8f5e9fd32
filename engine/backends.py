"""Backends run the streaming step for a batch of stream slots; they own the streams' state.

State stays where the backend computes (a CUDA tensor, a numpy array), in one pool per state
tensor with a row per stream slot, so a step moves only the hop of audio in and the frames out.
Every backend has the same interface: `reset(slot)` clears a slot for a new stream and
`run(slots, inputs)` advances those slots by one hop and returns the step's outputs as numpy.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..training.errors import UserError
from .interface import StepInterface, TensorSpec, graph_outputs, ring_index, state_input, state_output

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# Slots that are not consecutive are run as the whole span from the first to the last when the
# span is at most this many times their number: computing a row that is then thrown away (about
# 0.26 ms at 48 streams on this machine) costs less than gathering a row's 1.2 MB of state and
# computing it (0.44 ms). The server's steps are such subsets: a few sessions' hops miss each step.
COVER_SPAN = 1.7


def contiguous(slots: np.ndarray) -> slice | None:
    """The slots as one slice when they are consecutive (no gather or scatter needed)."""
    if len(slots) and slots[-1] - slots[0] == len(slots) - 1 and np.all(np.diff(slots) == 1):
        return slice(int(slots[0]), int(slots[-1]) + 1)
    return None


def write_ring_rows(pool: np.ndarray, slots: np.ndarray, rows: np.ndarray, at: np.ndarray, axis: int) -> None:
    """Write each stream's new ring rows (`rows`, n of them along `axis` + 1) into its pool row
    `slots[b]` at positions `at` (B, n; -1: not written), in place."""
    batch, index = np.nonzero(at >= 0)
    np.moveaxis(pool, axis + 1, 1)[slots[batch], at[batch, index]] = np.moveaxis(rows, axis + 1, 1)[batch, index]


class Backend(ABC):
    """Runs steps for rows (`slots`) of its state pools. `capacity` grows on demand."""

    name: str = ""
    max_batch: int | None = None  # largest batch one run accepts (a TensorRT profile); None = any
    concurrent_runs: bool = False  # runs of disjoint slots may overlap on two threads

    def __init__(self, interface: StepInterface):
        self.interface = interface
        self.capacity = 0

    @abstractmethod
    def _allocate(self, capacity: int) -> None:
        """Grow every state pool to `capacity` rows, keeping the rows in use."""

    @abstractmethod
    def reset(self, slot: int) -> None:
        """Zero the state of `slot`: a new stream starts from silence at step 0."""

    @abstractmethod
    def run(self, slots: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Advance `slots` by one hop; inputs and outputs are numpy arrays with a batch axis."""

    @abstractmethod
    def spare(self) -> "Backend":
        """Another backend of the same step with its own state, for work beside this one's streams
        from another thread (the rest face, `Engine.rest_face`)."""

    def ensure_capacity(self, slots: int) -> None:
        if slots > self.capacity:
            grown = max(slots, 2 * self.capacity, 4)
            self._allocate(grown)
            self.capacity = grown


class IndexedPoolBackend(Backend):
    """A backend whose state pools are arrays indexed in place (torch tensors, numpy arrays)."""

    def __init__(self, interface: StepInterface):
        super().__init__(interface)
        self.pools: dict[str, Any] = {}  # state name -> (capacity, *shape) array

    @abstractmethod
    def _zeros(self, spec: TensorSpec, rows: int) -> Any:
        """A zeroed pool of `rows` rows for one state tensor."""

    def _allocate(self, capacity: int) -> None:
        for spec in self.interface.states:
            pool = self._zeros(spec, capacity)
            if spec.name in self.pools:
                pool[: self.capacity] = self.pools[spec.name]
            self.pools[spec.name] = pool

    def reset(self, slot: int) -> None:
        self.ensure_capacity(slot + 1)
        for pool in self.pools.values():
            pool[slot] = 0


class OnnxRuntimeBackend(IndexedPoolBackend):
    """The exported ONNX step on ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    concurrent_runs = True  # an InferenceSession runs concurrent calls; each writes only its own slots' rows

    def __init__(self, onnx_path: Path, interface: StepInterface, threads: int | None = None,
                 model: bytes | None = None):
        """`model`: the file's bytes when already read (a spare backend; the file may be gone, as a
        checkpoint's temporary export is)."""
        super().__init__(interface)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UserError("the onnxruntime backend is not installed: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # One thread by default: a step is ~1 ms of small kernels, and a second spinning worker on a
        # 2-core machine cost more than it gave (p95 5.0 ms and 8 streams vs 0.68 ms and 32; docs/results.md).
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        self.path, self.threads = onnx_path, threads
        try:
            self.model = Path(onnx_path).read_bytes() if model is None else model
            self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise UserError(f"ONNX Runtime cannot load {onnx_path} ({exc}): re-export it with emotalk-export") from exc
        check_graph_names(self.session, interface, onnx_path)
        self.output_names = graph_outputs(interface)
        self._gathered: dict[str, np.ndarray] = {}  # state name -> rows of scattered slots, reused

    def _zeros(self, spec: TensorSpec, rows: int) -> np.ndarray:
        return np.zeros((rows, *spec.shape), dtype=spec.dtype)

    def _allocate(self, capacity: int) -> None:
        super()._allocate(capacity)
        self._gathered = {name: np.empty_like(pool) for name, pool in self.pools.items()}

    def _state_rows(self, name: str, slots: np.ndarray, rows: slice | None) -> np.ndarray:
        """The pool rows of `slots`: a view when they are consecutive, else gathered into a buffer
        kept from step to step. A new array each step cost more than the copy (fresh pages,
        about 60 MB a step at 48 streams: a step took 41 ms instead of 12). Each run gathers into
        the buffer's rows from its first slot on, so concurrent runs of disjoint slot ranges do
        not share rows."""
        if rows is not None:
            return self.pools[name][rows]
        start = int(slots[0])
        return np.take(self.pools[name], slots, axis=0, out=self._gathered[name][start:start + len(slots)], mode="clip")

    def spare(self) -> "OnnxRuntimeBackend":
        return OnnxRuntimeBackend(self.path, self.interface, self.threads, self.model)

    def run(self, slots: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, kept = contiguous(slots), None
        feed = {spec.name: inputs[spec.name] for spec in self.interface.inputs}
        if rows is None and slots[-1] - slots[0] + 1 <= COVER_SPAN * len(slots):
            rows, kept = slice(int(slots[0]), int(slots[-1]) + 1), slots - slots[0]  # the span; keep `kept`
            for name, value in feed.items():
                feed[name] = np.zeros((rows.stop - rows.start, *value.shape[1:]), dtype=value.dtype)
                feed[name][kept] = value
        for name in self.pools:
            feed[state_input(name)] = self._state_rows(name, slots, rows)
        results = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        if kept is not None:
            results = {name: value[kept] for name, value in results.items()}
        written = rows if rows is not None and kept is None else slots  # the pool rows the new states go to
        for spec in self.interface.states:
            value = results[state_output(spec.name)]
            if spec.ring_axis is None:
                self.pools[spec.name][written] = value
            else:
                write_ring_rows(self.pools[spec.name], slots, value, results[ring_index(spec.name)], spec.ring_axis)
        return {spec.name: results[spec.name] for spec in self.interface.outputs}


def check_graph_names(session, interface: StepInterface, path: Path) -> None:
    """Refuse an ONNX file whose inputs are not the ones its manifest describes."""
    expected = {s.name for s in interface.inputs} | {state_input(s.name) for s in interface.states}
    found = {i.name for i in session.get_inputs()}
    if expected != found:
        missing = sorted(expected - found)[:3]
        extra = sorted(found - expected)[:3]
        raise UserError(f"{path} does not match its manifest (missing inputs {missing}, unexpected {extra}): "
                        f"re-export the engine with emotalk-export")


def require_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def batches(slots: Sequence[int], max_batch: int | None) -> list[np.ndarray]:
    """Split sorted slots into runs of at most `max_batch`."""
    array = np.asarray(sorted(slots), dtype=np.int64)
    if not max_batch or len(array) <= max_batch:
        return [array]
    return [array[i:i + max_batch] for i in range(0, len(array), max_batch)]
