"""ieagan: basf2's class-conditional IEA-GAN generator (11,676,449 parameters).

A BigGAN-deep style generator (channel width 32, depth 2, base height factor 3). The 40 sensor labels of an event
take a shared 128-number embedding; one relational-reasoning encoder block (2 heads, pre-norm, feed-forward 128)
mixes the 40 embeddings of an event, and each is joined to its image's latent (128): c = [e, z] (256 numbers).
A spectrally normalised linear layer maps c to (N, 512, 4, 12); twelve residual blocks with class-conditional
batch norm (conditioned on c; every second block upsamples x2) lead to (N, 32, 256, 768); then batch norm, ReLU,
3x3 convolution to one channel and tanh give (N, 1, 256, 768). Parameter and buffer names are basf2's, so its
checkpoints (payload ``PXDBackgroundGenerator_ieagan``) load strictly.

Because of the relational block an event's 40 images are generated together: a forward call whose batch is a
multiple of 40 holds whole events (40 consecutive images each, labels 0..39) and mixes each event's embeddings
only among themselves, so an image does not depend on the other events in its call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pxdbg.models import common

LATENT_DIM = 128
EMBED_DIM = 128
N_LABELS = common.IMAGES_PER_FRAME
#: Generator output at or below this value is set to -1 (no hit): basf2's cut "below 7 ADC" (-0.26 is 6.78 ADC
#: before truncation, so the lowest charge kept is 6).
CUT = -0.26
#: Channels (in, out) of the six stages of two blocks each; the first block of a stage keeps its width.
STAGES = ((512, 512), (512, 256), (256, 256), (256, 128), (128, 64), (64, 32))
BOTTOM = (4, 12)  # bottom width 4, base height factor 3
SN_EPS = 1e-6
BN_EPS = 1e-5


class _SpectralNorm:
    """Spectral normalisation as basf2's generator does it: one power iteration from the stored ``u0``.

    In eval mode ``u0`` is not updated, so the weight is ``weight / sigma`` with sigma the singular value
    estimated from ``u0``; it is then a function of the stored tensors alone and is computed once, again only
    when the weight or ``u0`` change (a loaded checkpoint, another device or memory layout). In training mode
    ``u0`` and ``sv0`` are updated as during training upstream. The estimate is computed in fp32 even under
    autocast, so a bf16 run divides by the same sigma.
    """

    weight: torch.Tensor
    u0: torch.Tensor
    sv0: torch.Tensor
    training: bool

    def _init_sn(self, num_outputs: int) -> None:
        self.register_buffer("u0", torch.randn(1, num_outputs))
        self.register_buffer("sv0", torch.ones(1))
        self._sn_cache: tuple | None = None

    def normalised_weight(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self._normalise()
        key = (
            self.weight.data_ptr(),
            self.weight._version,
            self.u0.data_ptr(),
            self.u0._version,
            self.weight.device,
            self.weight.dtype,
            self.weight.stride(),
        )
        if self._sn_cache is None or self._sn_cache[0] != key:
            # the cache holds the tensors it was computed from, so no other tensor can take their addresses
            self._sn_cache = (key, self._normalise(), self.weight.detach(), self.u0)
        return self._sn_cache[1]

    def _normalise(self) -> torch.Tensor:
        with torch.autocast(self.weight.device.type, enabled=False):
            w = self.weight.reshape(self.weight.shape[0], -1).float()
            with torch.no_grad():
                v = F.normalize(self.u0.float() @ w, eps=SN_EPS)
                u = F.normalize(v @ w.t(), eps=SN_EPS)
            sigma = ((v @ w.t()) @ u.t()).squeeze()
            if self.training:
                with torch.no_grad():
                    self.u0.copy_(u)
                    self.sv0.copy_(sigma)
            return self.weight / sigma


def _eval_weight(layer: _SpectralNorm) -> torch.Tensor:
    """The weight a spectrally normalised layer uses in eval mode (u0 not updated), in fp32."""
    with torch.no_grad(), torch.autocast(layer.weight.device.type, enabled=False):
        training = layer.training
        layer.training = False
        try:
            return layer._normalise().detach().float()
        finally:
            layer.training = training


class SNConv2d(nn.Conv2d, _SpectralNorm):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        nn.Conv2d.__init__(self, cin, cout, kernel_size, padding=padding)
        self._init_sn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalised_weight(), self.bias, self.stride, self.padding)

    def inference_layer(self) -> nn.Conv2d:
        """The eval-mode layer as a plain Conv2d holding the normalised weight (what an engine runs)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, padding=self.padding)
        with torch.no_grad():
            conv.weight.copy_(_eval_weight(self))
            conv.bias.copy_(self.bias)
        return conv.to(self.weight.device).eval().requires_grad_(False)


class SNLinear(nn.Linear, _SpectralNorm):
    def __init__(self, cin: int, cout: int, bias: bool = True) -> None:
        nn.Linear.__init__(self, cin, cout, bias)
        self._init_sn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalised_weight(), self.bias)

    def inference_layer(self) -> nn.Linear:
        """The eval-mode layer as a plain Linear holding the normalised weight (what an engine runs)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(_eval_weight(self))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.to(self.weight.device).eval().requires_grad_(False)


class BatchNorm(nn.Module):
    """Batch norm with basf2's names: parameters ``gain``, ``bias``; statistics ``stored_mean``, ``stored_var``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training, 0.1, BN_EPS)

    def inference_layer(self) -> nn.BatchNorm2d:
        """The eval-mode layer as a plain BatchNorm2d (what an engine runs)."""
        bn = nn.BatchNorm2d(self.gain.shape[0], eps=BN_EPS)
        with torch.no_grad():
            bn.weight.copy_(self.gain)
            bn.bias.copy_(self.bias)
            bn.running_mean.copy_(self.stored_mean)
            bn.running_var.copy_(self.stored_var)
        return bn.to(self.gain.device).eval().requires_grad_(False)


class ConditionalBatchNorm(nn.Module):
    """Class-conditional batch norm: normalise with the stored statistics, then ``x * (1 + gain(c)) + bias(c)``."""

    def __init__(self, channels: int, cond_dim: int = EMBED_DIM + LATENT_DIM) -> None:
        super().__init__()
        self.gain = SNLinear(cond_dim, channels, bias=False)
        self.bias = SNLinear(cond_dim, channels, bias=False)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n = c.shape[0]
        gain = 1 + self.gain(c)
        bias = self.bias(c)
        if self.training:
            out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, True, 0.1, BN_EPS)
            return out * gain.view(n, -1, 1, 1) + bias.view(n, -1, 1, 1)
        # (x - mean) / std * gain + bias in one pass over the image: x * scale + shift
        scale = gain * torch.rsqrt(self.stored_var + BN_EPS)
        shift = bias - self.stored_mean * scale
        return torch.addcmul(shift.to(x.dtype).view(n, -1, 1, 1), x, scale.to(x.dtype).view(n, -1, 1, 1))

    def inference_layer(self) -> ConditionalBatchNormInference:
        """The eval-mode layer with its two normalised gain/bias weights held in fp32 (what an engine runs)."""
        return ConditionalBatchNormInference(self)


class ConditionalBatchNormInference(nn.Module):
    """Eval-mode conditional batch norm for an engine: the per-image scale and shift are computed from c in fp32
    and applied to an activation of any dtype in fp32 arithmetic, rounded once to the activation's dtype.

    In a bf16 engine a scale and shift rounded to bf16 would be a systematic error, the same for every pixel of
    an image's channel, which the following convolution adds up coherently; rounding the result is noise.
    """

    def __init__(self, bn: ConditionalBatchNorm) -> None:
        super().__init__()
        self.register_buffer("gain_weight", _eval_weight(bn.gain).clone())
        self.register_buffer("bias_weight", _eval_weight(bn.bias).clone())
        self.register_buffer("inv_std", torch.rsqrt(bn.stored_var.detach().float() + BN_EPS))
        self.register_buffer("mean", bn.stored_mean.detach().float().clone())

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n = c.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            c = c.float()
            scale = (1 + F.linear(c, self.gain_weight)) * self.inv_std
            shift = F.linear(c, self.bias_weight) - self.mean * scale
            y = torch.addcmul(shift.view(n, -1, 1, 1), x, scale.view(n, -1, 1, 1))
        return y.to(x.dtype)


class MultiheadAttention(nn.Module):
    """Self-attention over a sequence (G, S, D) with one stacked q/k/v projection (per head: q, k, v)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, s, d = x.shape
        qkv = self.qkv_proj(x).reshape(g, s, self.heads, 3 * d // self.heads).permute(0, 2, 1, 3)
        q, k, v = qkv.chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.o_proj((attention @ v).permute(0, 2, 1, 3).reshape(g, s, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block (dropout 0 at inference, so none is applied)."""

    def __init__(self, dim: int, heads: int, feedforward: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.linear_net = nn.Sequential(
            nn.Linear(dim, feedforward), nn.Dropout(0.0), nn.ReLU(), nn.Linear(feedforward, dim)
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.linear_net(self.norm2(x))


class RelationalReasoning(nn.Module):
    def __init__(self, dim: int = EMBED_DIM, heads: int = 2, feedforward: int = 128) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderBlock(dim, heads, feedforward)])
        self.norm = nn.LayerNorm(dim)

    def inference_layer(self) -> nn.Module:
        """Kept in fp32 by an engine: its output conditions every batch norm of the image, so its rounding
        would be a systematic error per image, and it costs ~0.1 % of the event's arithmetic."""
        from pxdbg.models.fold import Fp32Output

        return Fp32Output(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class GBlock(nn.Module):
    """BigGAN-deep residual block: 1x1 down to in/4 channels, two 3x3, 1x1 up; the shortcut drops channels."""

    def __init__(self, cin: int, cout: int, upsample: bool) -> None:
        super().__init__()
        hidden = cin // 4
        self.cout = cout
        self.upsample = upsample
        self.conv1 = SNConv2d(cin, hidden, 1, 0)
        self.conv2 = SNConv2d(hidden, hidden)
        self.conv3 = SNConv2d(hidden, hidden)
        self.conv4 = SNConv2d(hidden, cout, 1, 0)
        self.bn1 = ConditionalBatchNorm(cin)
        self.bn2 = ConditionalBatchNorm(hidden)
        self.bn3 = ConditionalBatchNorm(hidden)
        self.bn4 = ConditionalBatchNorm(hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu_(self.bn1(x, c)))  # in place: every norm and conv returns a new tensor
        h = F.relu_(self.bn2(h, c))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2)
        h = self.conv2(h)
        h = self.conv3(F.relu_(self.bn3(h, c)))
        h = self.conv4(F.relu_(self.bn4(h, c)))
        x = x[:, : self.cout]
        if not self.upsample:
            return h.add_(x)
        # h + the x2 nearest-upsampled shortcut, added through a view instead of materialising the upsampled x
        n, ch, rows, cols = x.shape
        h.view(n, ch, rows, 2, cols, 2).add_(x[:, :, :, None, :, None])
        return h


class Model(nn.Module):
    #: Images mixed together by the relational block: one event (labels 0..39).
    images_per_event = N_LABELS

    def __init__(self, stages: tuple[tuple[int, int], ...] = STAGES) -> None:
        """``stages`` other than STAGES give a narrower network of the same structure (tests; every width a
        multiple of 4); checkpoints fit only basf2's."""
        super().__init__()
        self.shared = nn.Embedding(N_LABELS, EMBED_DIM)
        self.RR_G = RelationalReasoning()
        self.linear = SNLinear(LATENT_DIM + EMBED_DIM, stages[0][0] * BOTTOM[0] * BOTTOM[1])
        self.blocks = nn.ModuleList(
            nn.ModuleList([GBlock(cin, cin if first else cout, upsample=not first)])
            for cin, cout in stages
            for first in (True, False)
        )
        self.output_layer = nn.Sequential(BatchNorm(stages[-1][1]), nn.ReLU(inplace=True), SNConv2d(stages[-1][1], 1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latents z (N, 128) and sensor labels y (N,) int64 in 0..39 -> images (N, 1, 256, 768) in [-1, 1].

        N a multiple of 40: whole events of 40 consecutive images, each event's label embeddings mixed among
        themselves; otherwise the N embeddings are mixed together (basf2's behaviour for any batch).
        """
        n = z.shape[0]
        if y.shape != (n,):
            raise ValueError(f"expected labels of shape ({n},) for {n} latents, got {tuple(y.shape)}")
        group = self.images_per_event if n % self.images_per_event == 0 else n
        e = self.shared(y)
        e = self.RR_G(e.view(n // group, group, -1)).reshape(n, -1)
        c = torch.cat([e, z], 1)
        h = self.linear(c).view(n, -1, *BOTTOM)
        for blocks in self.blocks:
            for block in blocks:
                h = block(h, c)
        return torch.tanh(self.output_layer(h))


def labels(events: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sensor labels for ``events`` whole events: 0..39 repeated, int64 (events * 40,)."""
    return torch.arange(N_LABELS, device=device).repeat(events)


def output_to_adc(y: torch.Tensor) -> torch.Tensor:
    """Generator output (..., 256, 768) -> uint8 ADC images (..., 250, 768): basf2's cut, then the usual transform.

    Output at or below -0.26 becomes -1 (no hit); the lowest charge that survives is 6 ADC (-0.26 maps to
    6.78 before truncation), as in basf2.
    """
    return common.output_to_adc(F.threshold(y.float(), CUT, -1.0))


def generate(model: Model) -> torch.Tensor:
    """One PXD frame: z = randn(40, 128) on the model's device, labels 0..39 -> (40, 250, 768) uint8, CPU."""
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        z = torch.randn(N_LABELS, LATENT_DIM, device=device)
        return output_to_adc(model(z, labels(1, device))[:, 0]).cpu()


def check_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state_dict`` cannot be an ieagan checkpoint beyond a name or shape mismatch, or None.

    The IEA-GAN authors' research generator mixes an extra random input ("rdof") into the label embeddings
    through a layer ``linear_f``; basf2's generator, the one this module implements, has neither.
    """
    extra = sorted(k for k in state_dict if k.startswith("linear_f.") or "rdof" in k)
    if not extra:
        return None
    return (
        f"it is a checkpoint of the IEA-GAN authors' research generator, which mixes an extra random input "
        f"('rdof') into the label embeddings through {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}; "
        f"basf2's generator, which pxdbg runs, has no such input. Use a checkpoint of basf2's model (conditions "
        f"payload PXDBackgroundGenerator_ieagan)"
    )
