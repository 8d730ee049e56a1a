"""GanEngine: how a GAN generator runs for batches of frames on a device.

- precision: ``fp32`` (default: exact and reproducible; TF32 is switched off on CUDA), ``bf16`` (autocast,
  CPU and CUDA), ``fp16`` (autocast, CUDA) and ``tf32`` (fp32 with TF32 tensor-core maths, CUDA); with
  autocast the output convolution and the charge transform stay in fp32. The precision is part of the
  model identity, so a consumer never mixes frames of different precisions;
- channels_last memory layout (faster convolutions on CPUs and tensor cores);
- a fixed call shape: every forward call has exactly ``images_per_call`` images (8 on the CPU, the
  measured optimum; 40 x ``frames_per_call`` on a GPU) and a short batch is padded. A frame's pixels then do
  not depend on how frames were batched, and on CUDA one graph serves every call;
- CUDA graphs: on a CUDA device the forward pass and the charge transform are captured once and replayed;
- sparsification on the device, with the digits copied to the host through a pinned staging buffer.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from pxdbg.models.common import LATENT_DIM, output_to_adc, sparsify
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import PRECISIONS

#: Images per forward call on the CPU: batches of 8 images were the fastest measured on 2-core CPUs.
CPU_IMAGES_PER_CALL = 8
#: Frames per forward call on a GPU (320 images), unless the producer says otherwise.
GPU_FRAMES_PER_CALL = 8
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision in ("fp16", "tf32") and device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; on the CPU use fp32 or bf16")


def _keep_output_layer_fp32(net: torch.nn.Module, device_type: str) -> None:
    """Run the image-producing convolution (the last one with a single output channel) in fp32.

    The charge transform is exponential (ADC = 256^x - 1), so an output rounded to bf16's 8 bits would
    move high charges by several ADC and flip pixels at the threshold; this layer costs ~1 % of the work.
    The forward method is replaced on the instance, so parameter names stay those of the checkpoint.
    """
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1]
    if not convs:
        return
    layer = convs[-1]
    plain_forward = layer.forward

    def forward_fp32(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device_type, enabled=False):
            return plain_forward(x.float())

    layer.forward = forward_fp32


class GanEngine:
    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str = "fp32", *,
                 images_per_call: int | None = None, cuda_graphs: bool | None = None) -> None:
        check_precision(precision, device)
        self.device = device
        self.precision = precision
        self.net = net.to(memory_format=torch.channels_last)
        if images_per_call is None:
            images_per_call = CPU_IMAGES_PER_CALL if device.type == "cpu" else 40 * GPU_FRAMES_PER_CALL
        if images_per_call < 1:
            raise ValueError("images_per_call must be at least 1")
        self.images_per_call = images_per_call
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if device.type == "cuda":  # fp32 means fp32: PyTorch lets cuDNN use TF32 unless told otherwise
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
        if precision in _AUTOCAST:
            _keep_output_layer_fp32(self.net, device.type)
        self._graph = None
        self._pinned: torch.Tensor | None = None

    def _autocast(self):
        dtype = _AUTOCAST.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _eager(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return output_to_adc(self.net(z)[:, 0])

    def _capture(self) -> None:
        static_z = torch.zeros(self.images_per_call, LATENT_DIM, device=self.device)
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
        """uint8 images (N, 250, 768) on the device for latents z (N, 96), in calls of the fixed shape."""
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
