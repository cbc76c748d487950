"""TFLite backend: LiteRT (``ai-edge-litert``) or the older ``tflite-runtime``, with XNNPACK."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ModelError
from .base import TensorSpec
from .native_output import first_line, native_stderr

INSTALL_HINT = "pip install 'edge-infer[tflite]' (LiteRT), or tflite-runtime on boards that ship it"

#: set to ``builtin_without_default_delegates`` to run without XNNPACK (e.g. under qemu)
RESOLVER_ENV = "EDGE_INFER_TFLITE_RESOLVER"


def import_interpreter():
    """Return ``(Interpreter class, OpResolverType enum, runtime name, version)``."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, mod.OpResolverType, "ai-edge-litert", getattr(ai_edge_litert, "__version__", "?")
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod

        return mod.Interpreter, mod.OpResolverType, "tflite-runtime", getattr(tflite_runtime, "__version__", "?")
    except ImportError:
        raise BackendUnavailableError(f"the tflite backend needs LiteRT: {INSTALL_HINT}") from None


def _dims(signature) -> tuple[int | None, ...]:
    """A tensor's shape signature with dynamic sizes (-1) as None."""
    return tuple(int(d) if d > 0 else None for d in signature)


class TFLiteBackend:
    """A TFLite Interpreter behind the :class:`~.base.Backend` interface.

    The batch dimension is resized on demand (``resize_tensor_input``); a model whose batch
    cannot be resized runs one item at a time.
    """

    name = "tflite"

    def __init__(self, path: Path, threads: int = 0, content: bytes | None = None, **_ignored):
        Interpreter, Resolver, self.runtime, self.version = import_interpreter()
        self.path = Path(path)
        self.threads = int(threads) if threads and threads > 0 else (os.cpu_count() or 1)
        kwargs = {"num_threads": self.threads}
        resolver = os.environ.get(RESOLVER_ENV, "").strip().upper()
        if resolver:
            try:
                kwargs["experimental_op_resolver_type"] = Resolver[resolver]
            except KeyError:
                names = ", ".join(r.name.lower() for r in Resolver)
                raise BackendUnavailableError(f"{RESOLVER_ENV}={resolver.lower()} is not one of: {names}") from None
        kept: list[str] = []
        try:  # XNNPACK announces itself on fd 2 at the first allocation: captured (native_output)
            with native_stderr(kept):
                if content is not None:
                    self._content = content  # the interpreter reads from this buffer for its lifetime
                    self.interp = Interpreter(model_content=content, **kwargs)
                else:
                    self.interp = Interpreter(model_path=os.fspath(self.path), **kwargs)
                self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"the TFLite runtime cannot load {self.path.name}: {first_line(exc, kept)}") from None
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(
                f"{self.path.name} has {len(ins)} inputs and {len(outs)} outputs; "
                "edge-infer runs models with one of each"
            )
        self._in_detail, self._out_detail = ins[0], outs[0]
        sig = ins[0].get("shape_signature", ins[0]["shape"])
        osig = outs[0].get("shape_signature", outs[0]["shape"])
        self._in = TensorSpec(ins[0]["name"], _dims(sig), np.dtype(ins[0]["dtype"]).name)
        self._out = TensorSpec(outs[0]["name"], _dims(osig), np.dtype(outs[0]["dtype"]).name)
        self._batch = int(ins[0]["shape"][0])
        self._resizable = True

    @property
    def input(self) -> TensorSpec:
        return self._in

    @property
    def output(self) -> TensorSpec:
        return self._out

    def _resize(self, shape: tuple[int, ...]) -> bool:
        if tuple(self.interp.get_input_details()[0]["shape"]) == shape:
            return True
        if not self._resizable:
            return False
        try:
            self.interp.resize_tensor_input(self._in_detail["index"], list(shape), strict=False)
            self.interp.allocate_tensors()
            return True
        except (ValueError, RuntimeError):
            self._resizable = False
            self.interp.resize_tensor_input(self._in_detail["index"], [1, *shape[1:]], strict=False)
            self.interp.allocate_tensors()
            return False

    def _quant_in(self, x: np.ndarray) -> np.ndarray:
        dt = np.dtype(self._in_detail["dtype"])
        scale, zero = self._in_detail.get("quantization", (0.0, 0))
        if dt in (np.int8, np.uint8) and scale:
            info = np.iinfo(dt)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dt)
        return x.astype(dt, copy=False)

    def _dequant_out(self, y: np.ndarray) -> np.ndarray:
        scale, zero = self._out_detail.get("quantization", (0.0, 0))
        if y.dtype in (np.int8, np.uint8) and scale:
            return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
        return y.astype(np.float32, copy=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not self._resize(tuple(batch.shape)):
            return np.concatenate([self.run(batch[i:i + 1]) for i in range(batch.shape[0])])
        self.interp.set_tensor(self._in_detail["index"], self._quant_in(np.ascontiguousarray(batch)))
        self.interp.invoke()
        y = self._dequant_out(self.interp.get_tensor(self._out_detail["index"]))
        if y.shape[0] != batch.shape[0] and batch.shape[0] > 1:
            # a graph that keeps a fixed batch inside resizes without complaint but returns
            # the wrong batch: run such a model one item at a time from now on
            self._resizable = False
            self.interp.resize_tensor_input(self._in_detail["index"], [1, *batch.shape[1:]], strict=False)
            self.interp.allocate_tensors()
            return np.concatenate([self.run(batch[i:i + 1]) for i in range(batch.shape[0])])
        return y

    def replica(self) -> TFLiteBackend:
        """A second interpreter on the same (already verified) model bytes: an interpreter
        must not be invoked from two threads at once."""
        return type(self)(self.path, threads=self.threads, content=getattr(self, "_content", None))

    def describe(self) -> dict:
        return {"backend": "tflite", "runtime": self.runtime, "runtime_version": self.version, "threads": self.threads,
                "op_resolver": os.environ.get(RESOLVER_ENV, "auto (XNNPACK)")}
