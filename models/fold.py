"""The network a GAN engine runs: batch norm folded into convolutions, weights cast once, biases kept exact.

The checkpoint's module (``convnet.Model``, ``resnet.Model`` ...) is left untouched: its state_dict names, strict
loading and its own forward stay those of the published models. :func:`inference_network` builds a separate
copy for inference only:

- eval-mode batch norm that directly follows a convolution is folded into that convolution's weight and bias,
  and a ReLU that directly follows a convolution runs inside it (``torch.fx`` finds the pairs; a network with
  layers of its own is not traced and keeps them, which is only slower);
- convolutions and linear layers hold their weights in the engine's dtype (bf16/fp16), cast once here instead
  of by autocast on every call, in channels_last. Their biases stay exact fp32: on the CPU oneDNN adds an fp32
  bias to the fp32 accumulator; elsewhere the bias is split into a bf16 part inside the convolution and the
  fp32 remainder added after it. A rounded bias is the same offset on every pixel of a channel, and the
  systematic shift it gives moves the occupancy (measured: +3.5 % for convnet's synthetic trained-like output),
  whereas rounding an activation is noise that averages out. Remaining batch norms keep fp32 parameters on
  bf16 activations. Other layers with parameters (a model's own modules) run under the engine's autocast;
- the output layer (a state_dict prefix from the model registry) returns fp32. Its ``output`` mode ``"fp32"``
  computes it in fp32; ``"bf16"`` in bf16 with its bias centred on the hit threshold: the pre-activation comes
  out as an offset from ``atanh(threshold)``, so values near the threshold, where a rounding flips a pixel
  between hit and no hit, keep bf16's full relative precision, and the threshold is added back in fp32.

Inference code of the models (past 500 lines: the folding of every layer kind sits beside the checks that it is
exact).
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: The generator output (tanh, in [-1, 1]) at which a pixel becomes a hit: ADC = 256^(0.5 y + 0.5) - 1 >= 1.
HIT_THRESHOLD = 2 * math.log(2) / math.log(256) - 1
OUTPUT_MODES = ("fp32", "bf16", "bf16x2")
_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _plain(mod: nn.Module) -> bool:
    return not (mod._forward_pre_hooks or mod._forward_hooks or nn.utils.parametrize.is_parametrized(mod))


def _traceable(net: nn.Module) -> bool:
    """True when tracing ``net`` gives its computation: every module holding tensors is a torch.nn layer (a
    leaf for torch.fx) without hooks. A model's own layer (spectral norm with a cached weight, conditional
    batch norm) could hold Python branches that a trace would freeze, so such a network is not traced."""
    for mod in net.modules():
        holds = any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False))
        if holds and not (type(mod).__module__.startswith("torch.nn.") and _plain(mod)):
            return False
    return True


def _inference_layers(net: nn.Module) -> int:
    """Replace each module of ``net`` that has an ``inference_layer()`` method (a model's own layer: a
    spectrally normalised convolution, a batch norm with its own parameter names) by what the method returns,
    its eval-mode equivalent, as far as possible in plain torch layers that the engine folds and casts. The
    model's module defines the equivalence and its tests check it; the number replaced."""
    replaced: list[str] = []
    for name, mod in list(net.named_modules()):
        if not name or any(name.startswith(p + ".") for p in replaced):
            continue
        make = getattr(mod, "inference_layer", None)
        if callable(make):
            _replace(net, name, make())
            replaced.append(name)
    return len(replaced)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (eval mode) with each batch norm that follows a convolution folded into it.

    The copy computes the same function up to rounding (fp32: relative differences of ~1e-6; the returned module
    is a ``torch.fx.GraphModule``); ``net`` itself is not changed. A network with layers of its own
    (see :func:`_traceable`) or that torch.fx cannot trace is copied unfolded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    _inference_layers(net)
    if not _traceable(net):
        log.debug("batch norm not folded: the network has layers of its own or computes weights in hooks")
        return net
    try:
        gm = torch.fx.symbolic_trace(net)
    except Exception as exc:  # any tracing failure only costs speed; the copy stays exact
        log.debug("batch norm not folded (%s: %s); the network runs unfolded", type(exc).__name__, exc)
        return net
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        prev = node.args[0] if bn is not None and node.args else None
        if not (
            type(bn) is nn.BatchNorm2d
            and bn.track_running_stats
            and isinstance(prev, torch.fx.Node)
            and prev.op == "call_module"
            and type(modules.get(prev.target)) is nn.Conv2d
            and len(prev.users) == 1
        ):
            continue
        _replace(gm, prev.target, fuse_conv_bn_eval(modules[prev.target], bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _onednn(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused convolution (fp32 bias on bf16 data, fused ReLU) serves this device and dtype."""
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def _add_channel_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y + bias per channel (dim 1), computed in fp32 and rounded once to y's dtype.

    Eval-mode batch norm with unit variance is this operation with a fast mixed-precision kernel (an in-place
    add of an fp32 tensor to a bf16 one takes a slow type-promoting path, several times longer).
    """
    if bias is None:
        return y
    ones = torch.ones_like(bias)
    return F.batch_norm(y, torch.zeros_like(bias), ones, ones, bias, False, 0.0, 0.0)


def _rounding_shift(w: torch.Tensor, w_low: torch.Tensor, input_mean: torch.Tensor | None) -> torch.Tensor | float:
    """The mean output change per output channel that rounding the weights ``w`` to ``w_low`` causes, for
    inputs whose per-channel mean is ``input_mean`` (bias correction: subtracting it from the bias removes the
    systematic part of the weights' rounding error, the part that moves every pixel of a channel alike)."""
    if input_mean is None or w.dim() not in (2, 4) or w.shape[1] != input_mean.shape[0]:
        return 0.0
    dw = w_low.float() - w.float()
    if dw.dim() == 4:
        dw = dw.sum((2, 3))
    return dw @ input_mean.float().to(dw.device)


def input_means(net: nn.Module, example: tuple) -> dict[str, torch.Tensor]:
    """The mean input per channel of every plain Conv2d and Linear of ``net`` (fp32), over one forward pass
    of ``example`` (the calibration batch)."""
    means: dict[str, torch.Tensor] = {}
    hooks = []

    def record(name):
        def hook(mod, args):
            x = args[0].detach().float()
            means[name] = x.mean((0, 2, 3)) if x.dim() == 4 else x.reshape(-1, x.shape[-1]).mean(0)

        return hook

    for name, mod in net.named_modules():
        if type(mod) in (nn.Conv2d, nn.Linear) and _plain(mod):
            hooks.append(mod.register_forward_pre_hook(record(name)))
    try:
        with torch.inference_mode():
            net(*example)
    finally:
        for h in hooks:
            h.remove()
    return means


class FastConv2d(nn.Module):
    """A Conv2d for inference: weight cast once to ``dtype`` (channels_last), exact fp32 bias, optional fused
    ReLU. ``bias_shift`` is subtracted from the bias (the output layer's centring)."""

    def __init__(
        self,
        conv: nn.Conv2d,
        dtype: torch.dtype,
        bias_shift: float | torch.Tensor = 0.0,
        input_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.relu = False
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        w = conv.weight.detach()
        self.register_buffer("weight", w.to(dtype).contiguous(memory_format=torch.channels_last))
        bias = conv.bias.detach().float() if conv.bias is not None else w.new_zeros(conv.out_channels).float()
        bias = bias - bias_shift - _rounding_shift(w, self.weight, input_mean)
        self.onednn = _onednn(w.device, dtype) and not isinstance(conv.padding, str)
        if self.onednn or dtype == torch.float32:
            self.register_buffer("bias", bias)
            self.register_buffer("bias_lo", None)
        else:
            hi = bias.to(dtype)
            self.register_buffer("bias", hi)
            self.register_buffer("bias_lo", bias - hi.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.onednn:
            return torch.ops.mkldnn._convolution_pointwise(
                x,
                self.weight,
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
                "relu" if self.relu else "none",
                [],
                "",
            )
        y = _add_channel_bias(
            F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups), self.bias_lo
        )
        return F.relu(y) if self.relu else y


class FastLinear(nn.Module):
    """A Linear with its weight cast once to ``dtype`` and its bias kept exact."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, input_mean: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("weight", linear.weight.detach().to(dtype))
        bias = linear.bias.detach().float() if linear.bias is not None else None
        if bias is not None:
            bias = bias - _rounding_shift(linear.weight.detach(), self.weight, input_mean)
        hi = None if bias is None else bias.to(dtype)
        self.register_buffer("bias", hi)
        self.register_buffer("bias_lo", None if bias is None or dtype == torch.float32 else bias - hi.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.dtype), self.weight, self.bias)
        if self.bias_lo is None:
            return y
        return _add_channel_bias(y.reshape(-1, y.shape[-1], 1, 1), self.bias_lo).view(y.shape)


class MixedBatchNorm2d(nn.Module):
    """Eval-mode batch norm with fp32 statistics and affine parameters on activations of another dtype."""

    def __init__(self, bn: nn.BatchNorm2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.relu = False  # a following ReLU, run in place on the fresh output
        self.eps = bn.eps
        for name in ("running_mean", "running_var", "weight", "bias"):
            t = getattr(bn, name)
            self.register_buffer(name, None if t is None else t.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(
            x.to(self.dtype), self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return F.relu_(y) if self.relu else y


class OutputConv2d(nn.Module):
    """The image-producing convolution, returning fp32 pre-activations (see the module docstring).

    Modes: ``"fp32"``; ``"bf16"`` (weights rounded to bf16, output centred on the threshold); ``"bf16x2"``
    (each weight split into a bf16 part and its bf16 remainder, computed as twice the output channels and
    summed in fp32: 16-bit weights for a layer whose cost is reading its input, not its few output channels).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        mode: str,
        dtype: torch.dtype,
        threshold: float = HIT_THRESHOLD,
        input_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output-layer mode {mode!r}; choose one of {', '.join(OUTPUT_MODES)}")
        self.mode = mode
        self.channels = c = conv.out_channels
        self.centre = 0.0 if mode == "fp32" else math.atanh(threshold)
        shift: float | torch.Tensor = self.centre
        if mode == "bf16x2":
            conv = copy.deepcopy(conv)
            w = conv.weight.detach().float()
            hi = w.to(dtype).float()
            lo = (w - hi).to(dtype).float()
            conv.weight = nn.Parameter(torch.cat([hi, lo]), requires_grad=False)
            b = conv.bias.detach().float() if conv.bias is not None else w.new_zeros(c)
            b = b - _rounding_shift(w, hi + lo, input_mean)
            conv.bias = nn.Parameter(torch.cat([b, b.new_zeros(c)]), requires_grad=False)
            conv.out_channels = 2 * c
            shift = torch.cat([torch.full((c,), self.centre), torch.zeros(c)])
            input_mean = None  # corrected above for the sum of the two halves
        self.conv = FastConv2d(
            conv,
            torch.float32 if mode == "fp32" else dtype,
            bias_shift=shift,
            input_mean=input_mean if mode != "fp32" else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.conv(x).float()
            if self.mode == "bf16x2":
                y = y[:, : self.channels] + y[:, self.channels :]
            return y.add_(self.centre) if self.centre else y


class Fp32Output(nn.Module):
    """Runs a layer in fp32 (autocast off, its parameters not cast), on an input of any floating dtype: a model's
    own output layer, or a part whose error would be systematic and is cheap to keep exact (a model returns
    one from ``inference_layer()``, e.g. ieagan's label-embedding encoder, which conditions every layer)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.layer(x.float())


def hit_threshold(to_adc, shape: tuple[int, int] = (8, 8)) -> float:
    """The lowest generator output (tanh, in [-1, 1]) that ``to_adc`` turns into a hit (>= 1 ADC), by bisection.

    A model's own charge transform (a cut, as basf2's ieagan has) moves it; the output layer centres on it.
    """
    lo, hi = -1.0, 1.0
    y = torch.empty(1, *shape)
    if not bool(to_adc(y.fill_(hi)).any()):
        return HIT_THRESHOLD
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if bool(to_adc(y.fill_(mid)).any()):
            hi = mid
        else:
            lo = mid
    return hi


def subpixel_weights(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The weights of a stride-1 convolution with an odd square kernel (padding k // 2) applied to a nearest x2
    upsampled input, rewritten for the input before upsampling: (4 * cout, cin, m, m) and the padding m // 2.

    Output pixel (2i + a, 2j + b) of channel c reads upsampled rows 2i + a + dy = input row i + (a + dy) // 2,
    so the taps of each phase (a, b) that read the same input pixel add up. Channel c * 4 + a * 2 + b holds
    phase (a, b) of channel c, the order of ``pixel_shuffle(·, 2)``. The sums are exact in fp32; a 5 x 5
    kernel becomes 3 x 3 per phase: 36 instead of 100 multiply-adds per input pixel and output channel.
    """
    cout, cin, k, _ = w.shape
    p = k // 2
    half = (p + 1) // 2
    m = 2 * half + 1
    out = w.new_zeros(cout, 2, 2, cin, m, m)
    for a in (0, 1):
        for dy in range(-p, p + 1):
            oy = (a + dy) // 2 + half
            for b in (0, 1):
                for dx in range(-p, p + 1):
                    ox = (b + dx) // 2 + half
                    out[:, a, b, :, oy, ox] += w[:, :, dy + p, dx + p]
    return out.reshape(4 * cout, cin, m, m), half


def phase_weights(w: torch.Tensor) -> list[torch.Tensor]:
    """The four kernels of :class:`SubpixelConv2d`'s phase form: for a stride-1 convolution with an odd kernel
    k = 2p + 1 (p odd: 3, 7, ...; padding p) applied to a nearest x2 upsampled input, output phase (a, b) reads
    p + 1 input rows starting at row (a - p) // 2 and as many columns, so its kernel is (p + 1) x (p + 1):
    a 3 x 3 kernel becomes four 2 x 2 ones, 16 instead of 36 multiply-adds per input pixel and output channel.
    Kernels in the order (0, 0), (0, 1), (1, 0), (1, 1); sums exact in fp32."""
    cout, cin, k, _ = w.shape
    p = k // 2
    s = p + 1
    kernels = []
    for a in (0, 1):
        for b in (0, 1):
            out = w.new_zeros(cout, cin, s, s)
            for dy in range(-p, p + 1):
                for dx in range(-p, p + 1):
                    out[:, :, (a + dy) // 2 - (a - p) // 2, (b + dx) // 2 - (b - p) // 2] += w[:, :, dy + p, dx + p]
            kernels.append(out)
    return kernels


class SubpixelConv2d(nn.Module):
    """conv(upsample_x2_nearest(x)) computed on x, without storing the upsampled input, in one of three forms:

    - a 1 x 1 convolution commutes with the upsampling: it runs on x, then the output is upsampled (4 x fewer);
    - ``phases`` (kernels 3 x 3, 7 x 7, ...; the default where it applies): one convolution per output phase
      with the (p + 1)-square kernel that phase reads (:func:`phase_weights`), written interleaved into the
      output (2.25 x fewer multiply-adds than on the upsampled input for 3 x 3);
    - dense (5 x 5, 9 x 9, ..., or ``phases=False``): one convolution of x with :func:`subpixel_weights`
      (4 x the output channels) and a pixel shuffle (5 x 5: 2.8 x fewer multiply-adds).
    """

    def __init__(self, conv: nn.Conv2d, phases: bool = True) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        self.pointwise = k == 1
        self.phases = None
        self.conv = None
        device = conv.weight.device
        bias = conv.bias is not None
        with torch.no_grad():
            if self.pointwise:
                inner = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=bias)
                inner.weight.copy_(conv.weight)
                if bias:
                    inner.bias.copy_(conv.bias)
                self.conv = inner.to(device=device)
            elif phases and (k // 2) % 2 == 1:
                self.phases = nn.ModuleList()
                p = k // 2
                for weight in phase_weights(conv.weight.detach().float()):
                    inner = nn.Conv2d(conv.in_channels, conv.out_channels, p + 1, padding=(p + 1) // 2, bias=bias)
                    inner.weight.copy_(weight)
                    if bias:
                        inner.bias.copy_(conv.bias)
                    self.phases.append(inner.to(device=device))
            else:
                weight, half = subpixel_weights(conv.weight.detach().float())
                inner = nn.Conv2d(conv.in_channels, 4 * conv.out_channels, weight.shape[-1], padding=half, bias=bias)
                inner.weight.copy_(weight)
                if bias:
                    inner.bias.copy_(conv.bias.repeat_interleave(4))
                self.conv = inner.to(device=device)

    def convolutions(self) -> list[nn.Module]:
        """The convolutions this layer runs (a fused ReLU is set on each)."""
        return list(self.phases) if self.phases is not None else [self.conv]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phases is None:
            y = self.conv(x)
            return F.interpolate(y, scale_factor=2, mode="nearest") if self.pointwise else F.pixel_shuffle(y, 2)
        n, _, rows, cols = x.shape
        out = None
        for i, conv in enumerate(self.phases):
            a, b = divmod(i, 2)
            y = conv(x)  # (n, c, rows + 1, cols + 1): phase (a, b) starts at row a, column b
            if out is None:  # channels_last (n, c, 2 rows, 2 cols) seen as (n, rows, 2, cols, 2, c)
                out = y.new_empty((n, rows, 2, cols, 2, y.shape[1]))
            out[:, :, a, :, b, :] = y[:, :, a : a + rows, b : b + cols].permute(0, 2, 3, 1)
        return out.view(n, 2 * rows, 2 * cols, -1).permute(0, 3, 1, 2)


def _is_upsample_x2(node, modules: dict) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return (
            type(m) is nn.Upsample
            and m.mode == "nearest"
            and m.size is None
            and m.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))
        )
    if node.op == "call_function" and node.target is F.interpolate:
        kw = node.kwargs
        return (
            kw.get("mode", "nearest") == "nearest"
            and kw.get("size") is None
            and kw.get("scale_factor") in (2, 2.0, (2, 2), (2.0, 2.0))
            and len(node.args) == 1
        )
    return False


def _subpixel(gm: torch.fx.GraphModule, dense: str | None = None) -> int:
    """Replace each plain stride-1 odd-kernel convolution whose input is a nearest x2 upsampling (used by it
    alone) with a :class:`SubpixelConv2d` of the upsampling's input; the number replaced. The layer named
    ``dense`` (the output layer, whose precision modes need one convolution) keeps the dense form."""
    modules = dict(gm.named_modules())
    done = 0
    for node in list(gm.graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if not (
            type(conv) is nn.Conv2d
            and _plain(conv)
            and conv.padding_mode == "zeros"
            and conv.groups == 1
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.kernel_size[0] % 2 == 1
            and conv.padding == (conv.kernel_size[0] // 2,) * 2
        ):
            continue
        up = node.args[0] if node.args else None
        if not (isinstance(up, torch.fx.Node) and _is_upsample_x2(up, modules) and len(up.users) == 1):
            continue
        _replace(gm, node.target, SubpixelConv2d(conv, phases=node.target != dense))
        node.args = (up.args[0], *node.args[1:])
        gm.graph.erase_node(up)
        done += 1
    if done:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return done


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _is_relu(node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu) and not node.kwargs.get("inplace", False)
    return node.op == "call_method" and node.target == "relu"


def _fuse_relu(gm: torch.fx.GraphModule) -> int:
    """Run each ReLU that is the only user of a :class:`FastConv2d` or :class:`MixedBatchNorm2d` inside it;
    the number fused."""
    modules = dict(gm.named_modules())
    fused = 0
    for node in list(gm.graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        # a ReLU commutes with the pixel shuffle, the phase interleaving and the upsampling
        convs = conv.convolutions() if isinstance(conv, SubpixelConv2d) else [conv]
        if not all(isinstance(c, (FastConv2d, MixedBatchNorm2d)) for c in convs) or len(node.users) != 1:
            continue
        (user,) = node.users
        if _is_relu(user, modules) and user.args[0] is node:
            for c in convs:
                c.relu = True
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
            fused += 1
    if fused:
        gm.graph.lint()
        gm.recompile()
    return fused


def inference_network(
    net: nn.Module,
    precision: str,
    output_layer: str | None,
    *,
    output: str = "bf16",
    threshold: float = HIT_THRESHOLD,
    example: tuple | None = None,
    subpixel: bool = True,
) -> nn.Module:
    """The network an engine runs for ``net`` at ``precision`` (``net`` is not changed).

    All precisions: batch norm folded, channels_last, fused ReLU. bf16/fp16: weights in that dtype with exact
    biases, the output layer ``output_layer`` (a module name of ``net``, e.g. ``"features.20"``) in ``output``
    mode (one of :data:`OUTPUT_MODES`); ``threshold`` is the tanh output at which a pixel becomes a hit.
    ``example`` (the network's call arguments, a calibration batch) gives the mean input of every layer, for
    the bias correction of rounded weights (:func:`_rounding_shift`).
    """
    if output not in OUTPUT_MODES:
        raise ValueError(f"unknown output-layer mode {output!r}; choose one of {', '.join(OUTPUT_MODES)}")
    folded = fold_batchnorm(net)
    if isinstance(folded, torch.fx.GraphModule) and subpixel:
        _subpixel(folded, dense=output_layer)
    folded = folded.to(memory_format=torch.channels_last)
    dtype = _LOW.get(precision, torch.float32)
    means = input_means(folded, example) if example is not None and dtype != torch.float32 else {}
    if output_layer is not None and dtype != torch.float32:
        try:
            layer = folded.get_submodule(output_layer)
        except AttributeError:
            raise ValueError(f"the network has no output layer {output_layer!r}") from None
        if isinstance(layer, SubpixelConv2d):  # the output layer read an upsampled input: its inner convolution
            output_layer, layer = f"{output_layer}.conv", layer.conv
        if type(layer) is nn.Conv2d and _plain(layer) and layer.padding_mode == "zeros":
            _replace(folded, output_layer, OutputConv2d(layer, output, dtype, threshold, means.get(output_layer)))
        else:  # a model's own layer (e.g. spectrally normalised): its weight is its business; run it in fp32
            _replace(folded, output_layer, Fp32Output(layer))
    kept = [name for name, mod in folded.named_modules() if isinstance(mod, Fp32Output)]
    for name, mod in list(folded.named_modules()):
        if not _plain(mod) or any(name.startswith(k + ".") for k in kept):  # an Fp32Output's layers stay fp32
            continue
        if type(mod) is nn.Conv2d and mod.padding_mode == "zeros":
            _replace(folded, name, FastConv2d(mod, dtype, input_mean=means.get(name)))
        elif type(mod) is nn.Linear and dtype != torch.float32:
            _replace(folded, name, FastLinear(mod, dtype, input_mean=means.get(name)))
        elif type(mod) is nn.BatchNorm2d and mod.track_running_stats:
            _replace(folded, name, MixedBatchNorm2d(mod, dtype))
    if isinstance(folded, torch.fx.GraphModule):
        _fuse_relu(folded)
    return folded
