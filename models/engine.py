"""GanEngine: how a GAN generator runs for batches of frames on a device.

- precision: ``fp32`` (default: exact and reproducible; TF32 is switched off on CUDA), ``bf16`` (CPU and CUDA),
  ``fp16`` (CUDA) and ``tf32`` (fp32 with TF32 tensor-core maths, CUDA). The precision is part of the model
  identity, so a consumer never mixes frames of different precisions. The TF32 switches are set for the
  engine's own calls only and restored afterwards, so engines of different precisions share a process;
- the engine runs its own inference copy of the network (:mod:`pxdbg.models.fold`): eval-mode batch norm folded
  into the convolutions, channels_last, and in bf16/fp16 weights cast once with exact biases; the output layer
  (the registry's ``output_layer``) returns fp32 (``output_precision``: ``"bf16"`` with its bias centred on the
  hit threshold, the default chosen by the fidelity measurement of ``pxdbg bench --producer``, or ``"fp32"``).
  The network given (the checkpoint's module) keeps its parameter names and its own forward;
- a fixed call shape: every forward call has exactly ``images_per_call`` images (CPU: 8 for unconditional
  models, the measured optimum, and one event of 40 for conditional ones; GPU: 40 x ``frames_per_call``), a
  short batch is padded. A frame's pixels then do not depend on how frames were batched, and on CUDA one graph
  serves every call;
- conditional models (registry ``conditional=True``) are called ``net(z, y)`` with the sensor labels ``y``
  (int64, image i of an event has label i), and every call holds whole events;
- CUDA graphs: on a CUDA device the forward pass and the charge transform are captured once and replayed;
- sparsification on the device, with the digits copied to the host through a pinned staging buffer.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import numpy as np
import torch

from pxdbg.models.common import output_to_adc, sparsify
from pxdbg.models.fold import HIT_THRESHOLD, OUTPUT_MODES, hit_threshold, inference_network
from pxdbg.shared.cpus import usable_cpus
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import PRECISIONS
from pxdbg.shared.registry import GAN, ModelInfo

#: Images per forward call on the CPU for unconditional models: 8 were the fastest measured on 2-core CPUs.
CPU_IMAGES_PER_CALL = 8
#: Frames per forward call on a GPU (320 images), unless the producer says otherwise.
GPU_FRAMES_PER_CALL = 8
#: The output layer's precision in bf16/fp16 unless asked otherwise (see ``pxdbg bench --producer``).
DEFAULT_OUTPUT_PRECISION = "bf16x2"
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: The TF32 switches are process-wide: an engine holds this lock while its settings are in force.
_FLAGS_LOCK = threading.RLock()


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision in ("fp16", "tf32") and device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; on the CPU use fp32 or bf16")


def recommended_threads(info: ModelInfo, device: torch.device | str) -> int:
    """torch intra-op threads for one producer of model ``info`` on ``device``.

    A GAN on the CPU: every CPU this process may use (its affinity, within a cgroup quota), since one large
    convolution scales over cores and the frames do not depend on the thread count's batching. A GAN on a GPU
    and the sparse models: 1 (the device, or more producer processes, do the work).
    """
    device = torch.device(device)
    if info.kind != GAN or device.type != "cpu":
        return 1
    return usable_cpus()


@contextlib.contextmanager
def precision_flags(precision: str):
    """TF32 on for ``tf32`` and off otherwise, for the block only: the switches are process-wide, so they are
    restored afterwards and a lock keeps two engines' calls (in two threads) from overlapping."""
    tf32 = precision == "tf32"
    with _FLAGS_LOCK:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class GanEngine:
    def __init__(
        self,
        net: torch.nn.Module,
        device: torch.device,
        precision: str = "fp32",
        *,
        info: ModelInfo | None = None,
        images_per_call: int | None = None,
        cuda_graphs: bool | None = None,
        output_precision: str = DEFAULT_OUTPUT_PRECISION,
    ) -> None:
        """``net``: the generator (eval mode, on ``device``); ``info``: its registry entry (the output layer,
        whether it is conditional, the latent size); without it, ``net`` is an unconditional generator whose
        output is taken as it comes."""
        check_precision(precision, device)
        if output_precision not in OUTPUT_MODES:
            raise ValueError(f"unknown output precision {output_precision!r}; choose one of {', '.join(OUTPUT_MODES)}")
        self.device = device
        self.precision = precision
        self.info = info
        self.conditional = bool(info and info.conditional)
        self.images_per_event = info.images_per_event if info else 40
        self.latent_dim = info.latent_dim if info and info.latent_dim else None
        self.output_precision = output_precision
        #: the checkpoint's module, unchanged
        self.net = net
        if images_per_call is None:
            if device.type == "cpu":
                images_per_call = self.images_per_event if self.conditional else CPU_IMAGES_PER_CALL
            else:
                images_per_call = self.images_per_event * GPU_FRAMES_PER_CALL
        if images_per_call < 1:
            raise ValueError("images_per_call must be at least 1")
        if self.conditional and images_per_call % self.images_per_event:
            raise ValueError(
                f"a conditional model runs whole events: images_per_call must be a multiple of "
                f"{self.images_per_event}, got {images_per_call}"
            )
        self.images_per_call = images_per_call
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        # a model module may bring its own charge transform (``output_to_adc``, e.g. with a cut)
        self._to_adc = getattr(sys.modules.get(type(net).__module__), "output_to_adc", None) or output_to_adc
        threshold = HIT_THRESHOLD if self._to_adc is output_to_adc else hit_threshold(self._to_adc)
        #: the network the engine runs (folded, cast): internal, its names are not the checkpoint's
        self.fast_net = inference_network(
            net,
            precision,
            info.output_layer if info else None,
            output=output_precision,
            threshold=threshold,
            example=self._calibration_batch(net) if precision in _AUTOCAST else None,
        )
        # layers the conversion left with parameters (a model's own modules) run under autocast
        self._needs_autocast = precision in _AUTOCAST and any(True for _ in self.fast_net.parameters())
        self._labels = None
        if self.conditional:
            self._labels = torch.arange(images_per_call, device=device) % self.images_per_event
        self._graph = None
        self._pinned: torch.Tensor | None = None

    def _calibration_batch(self, net: torch.nn.Module) -> tuple:
        """Fixed latents (one event for a conditional model, else one image) for the bias correction of rounded
        weights: the same on every run, so an engine's frames stay a function of the checkpoint alone."""
        n = self.images_per_event if self.conditional else 1
        g = torch.Generator().manual_seed(0)
        device = next(net.parameters()).device
        z = torch.randn(n, self._latent_dim(), generator=g).to(device)
        return (z, torch.arange(n, device=device) % self.images_per_event) if self.conditional else (z,)

    def precision_flags(self):
        """The engine's TF32 settings (on only for ``tf32``), in force for a block and restored after it."""
        return precision_flags(self.precision)

    def _autocast(self):
        if not self._needs_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[self.precision])

    def _eager(self, z: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.precision_flags():
            with self._autocast():
                y = self.fast_net(z, self._labels) if self.conditional else self.fast_net(z)
            return self._to_adc(y[:, 0].float())

    def _capture(self) -> None:
        static_z = torch.zeros(self.images_per_call, self._latent_dim(), device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN picks its kernels outside the capture
                self._eager(static_z)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._eager(static_z)
        self._graph = (graph, static_z, static_out)

    def _latent_dim(self) -> int:
        if self.latent_dim:
            return self.latent_dim
        from pxdbg.models.common import LATENT_DIM

        return LATENT_DIM

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._eager(z.to(self.device, non_blocking=True))
        if self._graph is None:
            self._capture()
        graph, static_z, static_out = self._graph
        static_z.copy_(z, non_blocking=True)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 250, 768) on the device for latents z (N, latent), in calls of the fixed shape.

        For a conditional model N is a whole number of events and image i gets the sensor label i % 40.
        """
        if z.dim() != 2 or (self.latent_dim and z.shape[1] != self.latent_dim):
            raise ValueError(f"expected latents of shape (N, {self._latent_dim()}), got {tuple(z.shape)}")
        if self.conditional and z.shape[0] % self.images_per_event:
            raise ValueError(
                f"a conditional model generates whole events: {z.shape[0]} latents is not a "
                f"multiple of {self.images_per_event}"
            )
        step = self.images_per_call
        out = []
        for start in range(0, z.shape[0], step):
            chunk = z[start : start + step]
            n = chunk.shape[0]
            if n < step:  # pad: every call has the same shape (and reuses one CUDA graph)
                chunk = torch.cat([chunk, chunk.new_zeros(step - n, chunk.shape[1])])
            out.append(self._call(chunk)[:n])
        return torch.cat(out)

    def sparsify(self, dense: torch.Tensor) -> list[SparseFrame]:
        """Digits of (B, 40, 250, 768) frames, found on the device; on CUDA copied through pinned memory."""
        if dense.device.type != "cuda":
            return sparsify(dense)
        return sparsify(dense, staging=self._staging)

    def _staging(self, t: torch.Tensor) -> np.ndarray:
        """Copy a device tensor to the host through a reusable pinned buffer; returns an owned numpy array."""
        nbytes = t.numel() * t.element_size()
        if self._pinned is None or self._pinned.numel() < nbytes:
            self._pinned = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8, pin_memory=True)
        host = self._pinned[:nbytes].view(t.dtype).view(t.shape)
        host.copy_(t, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return host.numpy().copy()
