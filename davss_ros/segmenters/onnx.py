"""ONNX key segmenters, run by onnxruntime.

The model has one float32 input, N x 3 x H x W, normalised as its declaration says, and its
first output is the logits at 1/``logit_stride``. The declaration comes from the sidecar
``<file>.yaml``, else from the model's ``metadata_props`` entry ``davss_ros.segmenter``
(JSON). A static input height and width become the declaration's ``input_size`` (a
declared one must match them).

On CPU the input tensor's memory is handed to onnxruntime as a numpy view (no copy) and the
output comes back as a torch tensor over onnxruntime's array. On a CUDA device with
onnxruntime's CUDA execution provider, input and output stay on the GPU (I/O binding);
without that provider the model runs on the CPU and the logits are moved to the device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .base import (
    DECLARATION_KEY,
    KeySegmenter,
    KeySegmenterError,
    SegmenterInfo,
    one_line,
    resolve_declaration,
)

if TYPE_CHECKING:
    import onnxruntime as ort

_FLOAT32 = "tensor(float)"


def _onnxruntime():
    """onnxruntime, imported on first use: only ONNX segmenters need it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise KeySegmenterError("ONNX key segmenters need onnxruntime, which is not "
                                "installed (pip install onnxruntime)") from exc
    return onnxruntime


class OnnxSegmenter(KeySegmenter):
    """An ONNX model in an onnxruntime session as key segmenter.

    Args:
        model: the model file, or its bytes.
        info: the declaration; None reads the sidecar of ``model`` (a file) or the model's
            metadata.
        device: where inputs come from and logits go; ``cuda`` uses onnxruntime's
            CUDAExecutionProvider when this onnxruntime has it.
        threads: onnxruntime's intra-op threads; None = ``torch.get_num_threads()``.
        spin: let onnxruntime's idle worker threads spin-wait for the next call (its
            default). Off here: in the pipeline torch and OpenCV work follows each key frame
            at once, and spinning threads take the cores it needs.
    """

    kind = "onnx"

    def __init__(self, model: str | Path | bytes, info: SegmenterInfo | None = None, *,
                 device: torch.device | str = "cpu", threads: int | None = None,
                 spin: bool = False, source: Path | None = None,
                 sha256: str | None = None) -> None:
        if source is None and not isinstance(model, bytes):
            source = Path(model)
        where = str(source) if source is not None else "ONNX model"
        self.threads = torch.get_num_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"{where}: threads must be >= 1, got {self.threads}")
        self.spin = bool(spin)
        self._model = str(model) if isinstance(model, Path) else model
        device = torch.device(device)
        self._session = self._new_session(device, where)
        meta = self._session.get_modelmeta().custom_metadata_map
        embedded_where = f"the ONNX metadata_props key '{DECLARATION_KEY}'"
        info = resolve_declaration(source, info=info, embedded=meta.get(DECLARATION_KEY),
                                   embedded_where=embedded_where, name=where)
        inp, out = self._check_signature(where)
        self._input, self._output = inp.name, out.name
        self._batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        hw = tuple(inp.shape[2:4])
        self._static_hw = hw if all(isinstance(v, int) for v in hw) else None
        self._out_shape = tuple(out.shape or ())  # () when onnxruntime cannot tell
        info = self._check_declaration(info, where)
        super().__init__(info, source=source, sha256=sha256)
        self.device = device

    @classmethod
    def from_file(cls, path: str | Path, *, info: SegmenterInfo | None = None,
                  device: torch.device | str = "cpu", threads: int | None = None,
                  spin: bool = False, sha256: str | None = None) -> OnnxSegmenter:
        """Open an ONNX file (see the class); KeySegmenterError (one line) when unusable."""
        path = Path(path)
        if not path.is_file():
            raise KeySegmenterError(f"{path}: no such ONNX file")
        return cls(path, info, device=device, threads=threads, spin=spin, source=path,
                   sha256=sha256)

    @property
    def providers(self) -> list[str]:
        """The execution providers of the session, preferred first."""
        return list(self._session.get_providers())

    def describe(self) -> str:
        return f"{super().describe()}, onnxruntime {self.providers[0]}, {self.threads} threads"

    # -- the session --------------------------------------------------------------------
    def _new_session(self, device: torch.device, where: str) -> ort.InferenceSession:
        ort = _onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: no per-session warnings in node logs
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if self.spin else "0")
        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            return ort.InferenceSession(self._model, opts, providers=providers)
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, ... (pybind types)
            raise KeySegmenterError(f"{where}: not an ONNX model onnxruntime can load "
                                    f"(expected an .onnx protobuf): {one_line(exc)}") from exc

    def _check_signature(self, where: str) -> tuple[ort.NodeArg, ort.NodeArg]:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise KeySegmenterError(f"{where}: expected a model with one input (the image), "
                                    f"it has {len(inputs)}: {', '.join(i.name for i in inputs)}")
        inp, out = inputs[0], outputs[0]
        if inp.type != _FLOAT32:
            raise KeySegmenterError(f"{where}: expected a float32 input, input '{inp.name}' is "
                                    f"{inp.type}")
        shape = inp.shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise KeySegmenterError(f"{where}: expected an N x 3 x H x W input, input "
                                    f"'{inp.name}' has shape {_shape(shape)}")
        if out.shape is not None and len(out.shape) != 4:
            raise KeySegmenterError(f"{where}: expected logits N x C x h x w (rank 4), output "
                                    f"'{out.name}' has shape {_shape(out.shape)}")
        return inp, out

    def _check_declaration(self, info: SegmenterInfo, where: str) -> SegmenterInfo:
        if self._static_hw is not None:
            if info.input_size is None:
                info = dataclasses.replace(info, input_size=self._static_hw)
            elif tuple(info.input_size) != self._static_hw:
                h, w = self._static_hw
                raise KeySegmenterError(
                    f"{where}: declared input_size {info.input_size[1]}x{info.input_size[0]} "
                    f"(WxH), the model's input is fixed at {w}x{h}")
        classes = self._out_shape[1] if len(self._out_shape) == 4 else None
        if isinstance(classes, int) and classes != info.num_classes:
            raise KeySegmenterError(f"{where}: gives {classes} classes, declared "
                                    f"{info.num_classes}")
        return info

    def _move(self, device: torch.device) -> None:
        # A session is bound to its providers (and GPU): a new one unless CPU stays CPU.
        if device.type == "cuda" or self._uses_cuda():
            self._session = self._new_session(device, self.name)

    def _uses_cuda(self) -> bool:
        return self.providers[0] == "CUDAExecutionProvider"

    # -- running ------------------------------------------------------------------------
    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self._static_hw is not None and (h, w) != self._static_hw:
            raise KeySegmenterError(f"{self.name}: takes {self._static_hw[1]}x"
                                    f"{self._static_hw[0]} (WxH) input, got {w}x{h}")
        if self._batch is not None and x.shape[0] != self._batch:
            if self._batch != 1:
                raise KeySegmenterError(f"{self.name}: takes batches of {self._batch}, got "
                                        f"{x.shape[0]}")
            # A model exported for one image: run a batch image by image.
            return torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        try:
            if x.is_cuda and self._uses_cuda():
                return self._run_cuda(x)
            out = self._session.run([self._output], {self._input: x.cpu().numpy()})[0]
        except KeySegmenterError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            raise KeySegmenterError(f"{self.name}: onnxruntime failed on an input of shape "
                                    f"{tuple(x.shape)}: {one_line(exc)}") from exc
        return torch.from_numpy(out).to(x.device)

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        index = x.device.index or 0
        binding = self._session.io_binding()
        binding.bind_input(self._input, "cuda", index, np.float32, tuple(x.shape),
                           x.data_ptr())
        shape = (x.shape[0], *self._out_shape[1:])
        out = None
        if len(shape) == 4 and all(isinstance(v, int) for v in shape):
            out = torch.empty(shape, dtype=torch.float32, device=x.device)
            binding.bind_output(self._output, "cuda", index, np.float32, shape, out.data_ptr())
        else:
            binding.bind_output(self._output, "cuda", index)
        # onnxruntime runs on its own stream: the input must be complete before it starts.
        torch.cuda.current_stream(x.device).synchronize()
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if out is None:
            out = torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(x.device)
        return out


def _shape(shape: list | None) -> str:
    return "unknown" if shape is None else "(" + ", ".join(str(v) for v in shape) + ")"
