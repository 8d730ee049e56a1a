"""ieagan: basf2's IEA-GAN generator: upstream state_dict, its layers, the event as a unit, the generation contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pxdbg import models
from pxdbg.models import CheckpointError, ieagan
from pxdbg.shared import registry

N_PARAMETERS = 11_676_449
BUFFERS = ("u0", "sv0", "stored_mean", "stored_var")


def upstream_shapes() -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of basf2's generator with its shape, written from basf2's ieagan.py and its CONFIG
    (G_ch 32, G_depth 2, H_base 3, bottom_width 4, resolution 256, dim_z 128, shared_dim 128, n_classes 40,
    no attention, SN convs/linears with one singular vector, ccbn on [embedding, z], RR_G with one layer)."""
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (40, 128)}
    rr = "RR_G.layers.0."
    for name, shape in (
        ("self_attn.qkv_proj", (384, 128)),
        ("self_attn.o_proj", (128, 128)),
        ("linear_net.0", (128, 128)),
        ("linear_net.3", (128, 128)),
    ):
        shapes[f"{rr}{name}.weight"], shapes[f"{rr}{name}.bias"] = shape, shape[:1]
    for norm in (rr + "norm1", rr + "norm2", "RR_G.norm"):
        shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (128,)

    def sn(prefix: str, shape: tuple[int, ...], bias: bool = True) -> None:
        shapes[f"{prefix}.weight"] = shape
        if bias:
            shapes[f"{prefix}.bias"] = shape[:1]
        shapes[f"{prefix}.u0"], shapes[f"{prefix}.sv0"] = (1, shape[0]), (1,)

    sn("linear", (512 * 4 * 4 * 3, 256))
    ins = [32 * k for k in (16, 16, 8, 8, 4, 2)]
    outs = [32 * k for k in (16, 8, 8, 4, 2, 1)]
    for stage in range(6):
        for g in range(2):
            cin = ins[stage]
            cout, hidden, p = cin if g == 0 else outs[stage], cin // 4, f"blocks.{2 * stage + g}.0"
            sn(f"{p}.conv1", (hidden, cin, 1, 1))
            sn(f"{p}.conv2", (hidden, hidden, 3, 3))
            sn(f"{p}.conv3", (hidden, hidden, 3, 3))
            sn(f"{p}.conv4", (cout, hidden, 1, 1))
            for bn, ch in (("bn1", cin), ("bn2", hidden), ("bn3", hidden), ("bn4", hidden)):
                sn(f"{p}.{bn}.gain", (ch, 256), bias=False)
                sn(f"{p}.{bn}.bias", (ch, 256), bias=False)
                shapes[f"{p}.{bn}.stored_mean"] = shapes[f"{p}.{bn}.stored_var"] = (ch,)
    for name in ("gain", "bias", "stored_mean", "stored_var"):
        shapes[f"output_layer.0.{name}"] = (32,)
    sn("output_layer.2", (1, 32, 3, 3))
    return shapes


def upstream_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) for k, shape in upstream_shapes().items()}
    for k in sd:
        if k.endswith("stored_var"):
            sd[k] = 0.5 + torch.rand(sd[k].shape, generator=g)
    return sd


def randomised(seed: int = 0, stages: tuple[tuple[int, int], ...] = ieagan.STAGES) -> ieagan.Model:
    """The model's own initialisation with non-trivial statistics, singular vectors and biases, in eval mode."""
    torch.manual_seed(seed)
    net = ieagan.Model(stages)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("stored_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("stored_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("u0"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith(".gain") or name == "output_layer.0.bias":
                t.copy_(t + 0.1 * torch.randn(t.shape, generator=g))
    return net.eval()


def test_state_dict_names_shapes_and_parameter_count_are_basf2s():
    shapes = upstream_shapes()
    assert len(shapes) == 603
    assert sum(math.prod(s) for k, s in shapes.items() if k.rsplit(".", 1)[1] not in BUFFERS) == N_PARAMETERS
    net = ieagan.Model()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes
    assert sum(p.numel() for p in net.parameters()) == N_PARAMETERS == registry.get("ieagan").parameters
    info = registry.get("ieagan")
    assert info.conditional and info.latent_dim == ieagan.LATENT_DIM == 128 and info.is_gan
    assert f"{info.output_layer}.weight" in shapes and shapes[f"{info.output_layer}.weight"][0] == 1
    assert info.payload == "PXDBackgroundGenerator_ieagan"


def test_a_checkpoint_with_basf2s_names_loads_strictly(tmp_path):
    sd = upstream_state_dict()
    path = tmp_path / "ieagan.pt"
    torch.save(sd, path)
    models.check_checkpoint("ieagan", path)
    model = models.load("ieagan", path)
    assert model.is_gan and model.identity.model == "ieagan"
    loaded = model.net.state_dict()
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_wrong_names_or_shapes_are_refused_naming_them(tmp_path):
    sd = upstream_state_dict()
    renamed = dict(sd)
    renamed["blocks.3.0.conv9.weight"] = renamed.pop("blocks.3.0.conv2.weight")
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.3\.0\.conv2\.weight.*unexpected: blocks\.3\.0\.conv9"):
        models.check_checkpoint("ieagan", tmp_path / "renamed.pt")
    reshaped = dict(sd)
    reshaped["shared.weight"] = torch.zeros(41, 128)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(CheckpointError, match=r"does not fit the model 'ieagan' \(wrong shape: shared\.weight\)"):
        models.load("ieagan", tmp_path / "reshaped.pt")


def test_the_authors_variant_with_an_extra_random_input_is_refused_saying_so(tmp_path):
    sd = upstream_state_dict()
    sd["linear_f.weight"] = torch.zeros(128, 132)  # shared_dim + rdof_dim 4 -> 128, spectrally normalised
    sd["linear_f.bias"], sd["linear_f.u0"], sd["linear_f.sv0"] = torch.zeros(128), torch.zeros(1, 128), torch.ones(1)
    torch.save(sd, tmp_path / "authors.pt")
    with pytest.raises(CheckpointError) as err:
        models.load("ieagan", tmp_path / "authors.pt")
    message = str(err.value)
    assert "linear_f.weight" in message and "rdof" in message and "authors' research generator" in message
    assert "PXDBackgroundGenerator_ieagan" in message and "\n" not in message


def _sn_reference(w: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
    """basf2's power_iteration with update=False, written out: v = n(u0 W), u = n(v W^T), sigma = v W^T u^T."""
    wm = w.reshape(w.shape[0], -1)
    v = F.normalize(u0 @ wm, eps=1e-6)
    u = F.normalize(v @ wm.t(), eps=1e-6)
    return w / (v @ wm.t() @ u.t()).squeeze()


def test_spectral_norm_in_eval_is_one_power_iteration_from_the_stored_u0_without_update():
    torch.manual_seed(1)
    layer = ieagan.SNLinear(16, 6).eval()
    u0 = layer.u0.clone()
    x = torch.randn(3, 16)
    with torch.no_grad():
        out = layer(x)
        again = layer(x)  # served from the cache
    torch.testing.assert_close(out, F.linear(x, _sn_reference(layer.weight, u0), layer.bias))
    assert torch.equal(out, again) and torch.equal(layer.u0, u0) and torch.equal(layer.sv0, torch.ones(1))
    # from the exact top singular vector the weight ends with spectral norm 1
    with torch.no_grad():
        layer.u0.copy_(torch.linalg.svd(layer.weight)[0][:, 0].unsqueeze(0))
        assert torch.linalg.matrix_norm(layer.normalised_weight(), 2).item() == pytest.approx(1.0, rel=1e-5)
        layer.weight.mul_(3.0)  # a changed weight is not served from the cache
        assert torch.linalg.matrix_norm(layer.normalised_weight(), 2).item() == pytest.approx(1.0, rel=1e-5)
    conv = ieagan.SNConv2d(4, 5).eval()
    x = torch.randn(2, 4, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, _sn_reference(conv.weight, conv.u0), conv.bias, padding=1))
    layer.train()  # training mode updates u0 and sv0 as upstream does
    with torch.no_grad():
        layer(x[:, 0, 0, :4].repeat(1, 4))
    assert not torch.equal(layer.u0, u0) and layer.sv0.item() != 1.0


def test_conditional_batch_norm_uses_stored_statistics_and_one_plus_linear_gain():
    torch.manual_seed(2)
    bn = ieagan.ConditionalBatchNorm(5, cond_dim=7).eval()
    with torch.no_grad():
        bn.stored_mean.copy_(torch.randn(5))
        bn.stored_var.copy_(0.5 + torch.rand(5))
    x, c = torch.randn(3, 5, 4, 6), torch.randn(3, 7)
    with torch.no_grad():
        gain = 1 + F.linear(c, _sn_reference(bn.gain.weight, bn.gain.u0))
        bias = F.linear(c, _sn_reference(bn.bias.weight, bn.bias.u0))
        want = (x - bn.stored_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.stored_var.view(1, -1, 1, 1) + 1e-5)
        torch.testing.assert_close(bn(x, c), want * gain.view(3, 5, 1, 1) + bias.view(3, 5, 1, 1))
        torch.testing.assert_close(bn(x, c)[1:], bn(x[1:], c[1:]))  # per image: no batch statistics


def test_inference_layers_compute_the_eval_layers_and_leave_the_module_alone():
    """What an engine runs instead of ieagan's own layers: plain Conv2d/Linear/BatchNorm2d holding the eval-mode
    weights, conditional batch norm with fp32 scale and shift; the same outputs, the module unchanged."""
    torch.manual_seed(3)
    conv, lin = ieagan.SNConv2d(4, 5).eval(), ieagan.SNLinear(16, 6).eval()
    bn = ieagan.BatchNorm(5).eval()
    cbn = ieagan.ConditionalBatchNorm(5, cond_dim=7).eval()
    with torch.no_grad():
        for t in (bn.stored_mean, cbn.stored_mean, bn.bias):
            t.copy_(torch.randn(5))
        for t in (bn.stored_var, cbn.stored_var, bn.gain):
            t.copy_(0.5 + torch.rand(5))
    before = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for m in (conv, lin, bn, cbn)}
    x, v, c = torch.randn(2, 4, 6, 7), torch.randn(3, 16), torch.randn(2, 7)
    h = torch.randn(2, 5, 6, 7)
    with torch.no_grad():
        plain_conv, plain_lin, plain_bn = conv.inference_layer(), lin.inference_layer(), bn.inference_layer()
        assert type(plain_conv) is torch.nn.Conv2d and type(plain_lin) is torch.nn.Linear
        assert type(plain_bn) is torch.nn.BatchNorm2d
        torch.testing.assert_close(plain_conv(x), conv(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(plain_lin(v), lin(v), rtol=0, atol=1e-6)
        torch.testing.assert_close(plain_bn(h), bn(h), rtol=0, atol=1e-6)
        fast = cbn.inference_layer()
        torch.testing.assert_close(fast(h, c), cbn(h, c), rtol=0, atol=1e-5)
        # on a bf16 activation: scale and shift applied in fp32, the result rounded once
        hb = h.to(torch.bfloat16)
        want = cbn(hb.float(), c).to(torch.bfloat16)
        assert fast(hb, c).dtype == torch.bfloat16 and torch.equal(fast(hb, c), want)
    for m in (conv, lin, bn, cbn):
        after = m.state_dict()
        assert all(torch.equal(after[k], t) for k, t in before[id(m)].items())


@pytest.mark.parametrize("width", ["narrow", pytest.param("full", marks=pytest.mark.slow)])
def test_the_engine_runs_plain_layers_and_gives_the_modules_outputs(width, narrow_widths):
    """fp32: the engine's network (inference layers, folded where possible) within 1e-5 of the module; bf16: no
    spectrally normalised or own batch-norm layer is left to autocast, the label encoder stays fp32."""
    from pxdbg.models.engine import GanEngine
    from pxdbg.models.fold import FastConv2d, Fp32Output

    torch.set_num_threads(2)
    net = randomised(4, ieagan.STAGES if width == "full" else narrow_widths["ieagan"])
    info = registry.get("ieagan")
    z = torch.randn(40, ieagan.LATENT_DIM, generator=torch.Generator().manual_seed(5))
    y = ieagan.labels(1)
    fp32 = GanEngine(net, torch.device("cpu"), "fp32", info=info)
    with torch.inference_mode():
        ref, out = net(z, y), fp32.fast_net(z, y)
    assert ref.std() > 1e-3
    # the published width within 1e-5; a narrow network of random weights spreads its outputs wider, and its
    # rounding differences with them (measured 1.1e-4 at the narrow widths)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 if width == "full" else 3e-4)
    bf16 = GanEngine(net, torch.device("cpu"), "bf16", info=info)
    kinds = {type(m) for m in bf16.fast_net.modules()}
    assert not kinds & {ieagan.SNConv2d, ieagan.SNLinear, ieagan.BatchNorm, ieagan.ConditionalBatchNorm}
    assert sum(isinstance(m, FastConv2d) and m.weight.dtype == torch.bfloat16 for m in bf16.fast_net.modules()) > 40
    assert isinstance(bf16.fast_net.RR_G, Fp32Output)
    assert all(p.dtype == torch.float32 for p in bf16.fast_net.RR_G.parameters())
    assert all(type(m) is not ieagan.SNConv2d or m.weight.dtype == torch.float32 for m in net.modules())


def reference_forward(sd: dict[str, torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """basf2's Generator.forward in eval mode on a bare state_dict, the N images as one sequence (y.unsqueeze(0))."""
    n = z.shape[0]

    def lin(p, x, bias=True):
        return F.linear(x, sd[p + ".weight"], sd[p + ".bias"] if bias else None)

    def snlin(p, x, bias=True):
        return F.linear(x, _sn_reference(sd[p + ".weight"], sd[p + ".u0"]), sd[p + ".bias"] if bias else None)

    def snconv(p, x):
        w = sd[p + ".weight"]
        return F.conv2d(x, _sn_reference(w, sd[p + ".u0"]), sd[p + ".bias"], padding=w.shape[-1] // 2)

    def ln(p, x):
        return F.layer_norm(x, (128,), sd[p + ".weight"], sd[p + ".bias"])

    def ccbn(p, x, c):
        out = F.batch_norm(x, sd[p + ".stored_mean"], sd[p + ".stored_var"], None, None, False, 0.1, 1e-5)
        return out * (1 + snlin(p + ".gain", c, False)).view(n, -1, 1, 1) + snlin(p + ".bias", c, False).view(
            n, -1, 1, 1
        )

    e = F.embedding(y, sd["shared.weight"]).unsqueeze(0)
    r = "RR_G.layers.0."
    qkv = lin(r + "self_attn.qkv_proj", ln(r + "norm1", e)).reshape(1, n, 2, 192).permute(0, 2, 1, 3)
    q, k, v = qkv.chunk(3, dim=-1)
    att = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1) @ v
    e = e + lin(r + "self_attn.o_proj", att.permute(0, 2, 1, 3).reshape(1, n, 128))
    e = e + lin(r + "linear_net.3", F.relu(lin(r + "linear_net.0", ln(r + "norm2", e))))
    c = torch.cat([ln("RR_G.norm", e).squeeze(0), z], 1)
    h = snlin("linear", c).view(n, -1, 4, 12)
    for b in range(12):
        p = f"blocks.{b}.0"
        t = F.relu(ccbn(p + ".bn2", snconv(p + ".conv1", F.relu(ccbn(p + ".bn1", h, c))), c))
        x = h[:, : sd[p + ".conv4.weight"].shape[0]]
        if b % 2:
            t, x = F.interpolate(t, scale_factor=2), F.interpolate(x, scale_factor=2)
        t = snconv(p + ".conv3", F.relu(ccbn(p + ".bn3", snconv(p + ".conv2", t), c)))
        h = snconv(p + ".conv4", F.relu(ccbn(p + ".bn4", t, c))) + x
    o = "output_layer.0."
    h = F.relu(
        F.batch_norm(h, sd[o + "stored_mean"], sd[o + "stored_var"], sd[o + "gain"], sd[o + "bias"], False, 0.1, 1e-5)
    )
    return torch.tanh(snconv("output_layer.2", h))


@pytest.mark.slow
def test_forward_matches_basf2s_computation_written_out():
    net = randomised(3)
    z, y = torch.randn(3, 128), torch.tensor([5, 17, 38])
    with torch.no_grad():
        out = net(z, y)
        want = reference_forward({k: v.clone() for k, v in net.state_dict().items()}, z, y)
    assert out.shape == (3, 1, 256, 768)
    assert (out.abs() < 0.9).float().mean() > 0.2, "a saturated output would make the comparison toothless"
    torch.testing.assert_close(out, want, atol=2e-4, rtol=0)


@pytest.mark.slow
def test_labels_matter_and_an_image_follows_its_label_not_its_position():
    net = randomised(4)
    z, y = torch.randn(3, 128), torch.tensor([0, 20, 39])
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = net(z, y)
        relabelled = net(z, y[perm])
        permuted = net(z[perm], y[perm])
    assert (out - relabelled).abs().amax(dim=(1, 2, 3)).min() > 0.05, "every image changes with its label"
    # no positional encoding: the same (latent, label) pairs in another order give the same images
    torch.testing.assert_close(permuted, out[perm], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_call_of_whole_events_mixes_each_events_labels_only_among_themselves():
    net = randomised(5)
    net.images_per_event = 2  # the grouping rule at a small size; an event is 40 images in production
    z, y = torch.randn(4, 128), torch.tensor([3, 30, 7, 11])
    with torch.no_grad():
        both = net(z, y)
        first, second = net(z[:2], y[:2]), net(z[2:], y[2:])
        relabelled = net(z, torch.cat([y[:2], torch.tensor([12, 25])]))
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=0)
    torch.testing.assert_close(relabelled[:2], first, atol=1e-5, rtol=0)  # unmoved by the other event's labels
    assert (relabelled[2:] - second).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_the_cut_is_basf2s_threshold_before_the_usual_charge_transform():
    values = torch.tensor([-1.0, -0.5, -0.27, -0.26, -0.2599, -0.255, -0.2499, -0.2, 0.0, 0.5, 1.0])
    img = values.view(1, -1).expand(256, -1).contiguous()
    adc = ieagan.output_to_adc(img)
    assert adc.shape == (250, 11) and adc.dtype == torch.uint8
    assert adc[0].tolist() == [0, 0, 0, 0, 6, 6, 7, 8, 15, 63, 255]


@pytest.mark.slow
def test_generate_gives_one_frame_of_40_sensors_with_nothing_below_the_cut():
    net = randomised(6)
    torch.manual_seed(7)
    frame = ieagan.generate(net)
    assert frame.shape == (40, 250, 768) and frame.dtype == torch.uint8 and frame.device.type == "cpu"
    hits = frame[frame > 0]
    assert 0 < hits.numel() < frame.numel(), "the cut removes some pixels and keeps others"
    assert int(hits.min()) >= 6, "basf2's cut (-0.26) leaves no charge below 6 ADC"
    assert int((hits < 10).sum()) > 0, "charges just above the cut occur, so the bound is tested"


@pytest.mark.slow
def test_frames_through_the_engine_do_not_depend_on_the_other_event_in_their_call(tmp_path):
    path = tmp_path / "ieagan.pt"
    torch.save(randomised(8).state_dict(), path)
    model = models.load("ieagan", path, images_per_call=80)  # two whole events per forward call
    assert model.engine.conditional and model.engine.images_per_call == 80
    pair = model.dense_frames(5, [0, 1])  # frame 1 next to frame 0
    alone = model.dense_frames(5, [1])  # frame 1 next to padding
    assert pair.shape == (2, 40, 250, 768) and pair.dtype == torch.uint8
    assert torch.equal(pair[1], alone[0])
    assert not torch.equal(pair[0], pair[1]), "frames draw their own latents"
    hits = pair[pair > 0]
    assert 0 < hits.numel() < pair.numel() and int(hits.min()) >= 6
