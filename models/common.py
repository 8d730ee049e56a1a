"""What the GAN generators share: the latent, the image -> charge transform, sparsification on the device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import FRAME_PIXELS, N_SENSORS, N_V, PIXELS_PER_SENSOR

LATENT_DIM = 96
IMAGES_PER_FRAME = N_SENSORS
#: Rows cropped from each side of the 256 x 768 generator output to get 250 x 768.
CROP = 3


def latents(rngs: Sequence[np.random.Generator], dim: int = LATENT_DIM) -> torch.Tensor:
    """Latent batch (len(rngs) * 40, dim), float32 on the CPU: frame i's 40 latents from ``rngs[i]`` alone.

    The latent is drawn on the CPU with numpy's named bit generator, so it is the same on every machine
    and device; it is moved to the model's device afterwards.
    """
    z = np.empty((len(rngs), IMAGES_PER_FRAME, dim), dtype=np.float32)
    for i, rng in enumerate(rngs):
        rng.standard_normal(out=z[i], dtype=np.float32)
    return torch.from_numpy(z.reshape(-1, dim))


def output_to_adc(y: torch.Tensor) -> torch.Tensor:
    """Generator output (..., 256, 768) in [-1, 1] -> uint8 ADC images (..., 250, 768), on y's device.

    x = clamp(0.5 y + 0.5, 0, 1); ADC = clamp(256^x - 1, 0, 255), truncated to uint8 (values below 1 ADC
    become 0, i.e. no hit).
    """
    y = y[..., CROP:-CROP, :].float()
    x = torch.clamp(0.5 * y + 0.5, 0.0, 1.0)
    adc = torch.clamp(torch.pow(256.0, x) - 1.0, 0.0, 255.0)
    return adc.to(torch.uint8)


def generate_images(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Run a GAN generator on latents z (N, 96) -> uint8 images (N, 250, 768) on the model's device."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        y = model(z.to(device, non_blocking=True))
        return output_to_adc(y[:, 0])


def seed_generate(model: torch.nn.Module) -> torch.Tensor:
    """The seed's generation contract: z = randn(40, 96) on the model's device -> (40, 250, 768) uint8, CPU."""
    device = next(model.parameters()).device
    model.eval()
    z = torch.randn(IMAGES_PER_FRAME, LATENT_DIM, device=device)
    return generate_images(model, z).cpu()


def wire_frames(dense: torch.Tensor, dense_above: int, sparsify=None) -> list[SparseFrame | np.ndarray]:
    """What a producer sends: sparse digits, except frames with more than ``dense_above`` hits, which stay
    dense (a host numpy array) because that is smaller and saves sparsifying millions of digits.
    ``sparsify`` defaults to :func:`sparsify` (an engine passes its pinned-memory variant)."""
    sparsify = sparsify or globals()["sparsify"]
    counts = (dense != 0).reshape(dense.shape[0], -1).sum(1).tolist()
    heavy = [i for i, n in enumerate(counts) if n > dense_above]
    if not heavy:
        return sparsify(dense)
    light = [i for i in range(dense.shape[0]) if i not in heavy]
    out: list = [None] * dense.shape[0]
    for i in heavy:
        out[i] = dense[i].cpu().numpy()
    if light:
        for i, frame in zip(light, sparsify(dense[light])):
            out[i] = frame
    return out


def sparsify(dense: torch.Tensor, staging=None) -> list[SparseFrame]:
    """Sparse digits of a batch of dense frames (B, 40, 250, 768) uint8, computed on the tensor's device.

    Only the digits (and per-frame counts) are copied to the host, by ``staging(tensor) -> numpy array``
    when given (a pinned-memory copy on CUDA), else by ``tensor.cpu()``.
    """
    if dense.dtype != torch.uint8 or dense.dim() != 4 or dense.shape[1:] != (N_SENSORS, 250, N_V):
        raise ValueError(f"expected a (B, 40, 250, 768) uint8 tensor, got {tuple(dense.shape)} {dense.dtype}")
    b = dense.shape[0]
    flat = dense.reshape(-1)
    idx = torch.nonzero(flat).squeeze(1)
    charge = flat[idx]
    frame_of = torch.div(idx, FRAME_PIXELS, rounding_mode="floor")
    pos = idx - frame_of * FRAME_PIXELS
    sensor = torch.div(pos, PIXELS_PER_SENSOR, rounding_mode="floor")
    rest = pos - sensor * PIXELS_PER_SENSOR
    u = torch.div(rest, N_V, rounding_mode="floor")
    v = rest - u * N_V
    counts = torch.bincount(frame_of, minlength=b)
    packed = torch.stack((sensor, u, v)).to(torch.int16)
    to_host = staging or (lambda t: t.cpu().numpy())
    packed_np, c_np, counts_np = to_host(packed), to_host(charge), to_host(counts)
    s_np = packed_np[0].astype(np.uint8)
    u_np = packed_np[1].astype(np.uint8)
    v_np = packed_np[2].view(np.uint16)
    frames = []
    start = 0
    for n in counts_np.tolist():
        sl = slice(start, start + n)
        frames.append(SparseFrame(s_np[sl], u_np[sl], v_np[sl], c_np[sl]))
        start += n
    return frames
