"""onnxruntime backend: CPU everywhere, TensorRT and CUDA where a GPU build offers them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BudgetError, ModelError
from .base import TensorSpec
from .native_output import first_line, native_stderr

#: preference order of execution providers; the first ones present are used
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendUnavailableError(
            f"the onnx backend needs onnxruntime ({exc}); install it with: pip install onnxruntime"
        ) from None
    return ort


def choose_providers(available: list[str], wanted: list[str] | None = None) -> list[str]:
    """Execution providers to use, in :data:`PROVIDER_ORDER` (or ``wanted``) order.

    Always ends with the CPU provider so a node a GPU provider cannot run falls back.
    """
    order = list(wanted) if wanted else list(PROVIDER_ORDER)
    chosen = [p for p in order if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))


class OnnxBackend:
    """An onnxruntime InferenceSession behind the :class:`~.base.Backend` interface."""

    name = "onnx"

    def __init__(self, path: Path, threads: int = 0, providers: list[str] | None = None,
                 profile_prefix: str | None = None, content: bytes | None = None):
        ort = _import_ort()
        self.path = Path(path)
        self.threads = int(threads)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads > 0:
            opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        self.providers = choose_providers(ort.get_available_providers(), providers)
        kept: list[str] = []
        try:  # onnxruntime logs a failed load on fd 2 as well as raising: the one-line error quotes it
            with native_stderr(kept):
                source = content if content is not None else os.fspath(self.path)
                self.session = ort.InferenceSession(source, sess_options=opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load {self.path.name}: {first_line(exc, kept)}") from None
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(
                f"{self.path.name} has {len(ins)} inputs and {len(outs)} outputs; "
                "edge-infer runs models with one of each"
            )
        self._in, self._out = _spec(ins[0]), _spec(outs[0])
        self._in_dtype = np.dtype(self._in.dtype)
        self.version = ort.__version__

    @property
    def input(self) -> TensorSpec:
        return self._in

    @property
    def output(self) -> TensorSpec:
        return self._out

    def run(self, batch: np.ndarray) -> np.ndarray:
        fixed = self._in.shape[0]
        if fixed is not None and batch.shape[0] != fixed:
            return np.concatenate([self.run(batch[i:i + fixed]) for i in range(0, batch.shape[0], fixed)])
        x = batch if batch.dtype == self._in_dtype else batch.astype(self._in_dtype)
        try:
            (y,) = self.session.run(None, {self._in.name: x})
        except Exception as exc:  # onnxruntime's own exception types
            if "Failed to allocate memory" in str(exc) or isinstance(exc, MemoryError):
                raise BudgetError(
                    f"onnxruntime ran out of memory on a batch of {batch.shape[0]}; use a smaller --batch "
                    "or plan the run with --board"
                ) from None
            raise
        return y if y.dtype == np.float32 else y.astype(np.float32)

    def end_profiling(self) -> str:
        return self.session.end_profiling()

    def replica(self) -> OnnxBackend:
        """This backend: InferenceSession.run may be called from several threads at once
        (each call gets its own working memory; the weights are shared)."""
        return self

    def describe(self) -> dict:
        return {"backend": "onnx", "runtime": "onnxruntime", "runtime_version": self.version,
                "providers": self.session.get_providers(), "threads": self.threads}
