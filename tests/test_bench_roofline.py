"""The per-layer roofline of ``pxdbg bench --producer --roofline``: operator costs from profiled shapes, checked
against hand counts and the tensors the network really produces. No timing thresholds (machines are noisy)."""

from __future__ import annotations

import contextlib
import json

import pytest

torch = pytest.importorskip("torch")

from pxdbg import bench  # noqa: E402
from pxdbg.cli import build_parser  # noqa: E402

PEAKS = {"fp32": 0.2, "bf16": 0.8}  # TFLOP/s: nominal (the bench probes them; the test needs no real figures)


def _conv_layers(net) -> dict:
    """Module path -> bytes of the output, for every module of ``net`` that holds a 4-D weight (a convolution),
    from the tensors one forward call really produces."""
    out, hooks = {}, []
    for name, mod in net.named_modules():
        own = dict(mod.named_parameters(recurse=False)) | dict(mod.named_buffers(recurse=False))
        if own.get("weight") is not None and own["weight"].dim() == 4:

            def hook(m, i, o, name=name):
                out[name] = o.numel() * o.element_size()

            hooks.append(mod.register_forward_hook(hook))
    return out, hooks


def _check_rows(rows) -> None:
    json.dumps(rows)  # the bench puts them into its JSON result
    assert rows and all(r["time_ms"] > 0 for r in rows)
    for r in rows:
        assert r["bytes"] >= r["calls"] * r["output_bytes"]
        if r["bound"] != "-":  # the label says which side of the ridge point the intensity sits on
            assert (r["bound"] == "memory") == (r["intensity"] < r["ridge"]), r
            assert r["intensity"] == pytest.approx(r["flop"] / r["bytes"])
            peak = r["peak_tflops"] * 1e12
            bandwidth = peak / r["ridge"]
            assert r["roof_ms"] == pytest.approx(1e3 * max(r["flop"] / peak, r["bytes"] / bandwidth), rel=1e-9)
            assert r["share_of_roof"] == pytest.approx(r["roof_ms"] / r["time_ms"], rel=1e-9)


class _StubEngine:
    """What the roofline uses of an engine: a network, the call size, the context."""

    def __init__(self, net, images_per_call: int) -> None:
        self.fast_net, self.images_per_call = net, images_per_call
        self.conditional, self.images_per_event, self.precision = False, 40, "fp32"

    def precision_flags(self):
        return contextlib.nullcontext()

    def _autocast(self):
        return contextlib.nullcontext()

    def _latent_dim(self) -> int:
        return 16


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 4 * 8 * 8)
        self.conv = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, z):
        x = self.fc(z).view(-1, 4, 8, 8)
        y = torch.nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2)  # (N, 8, 8, 8)
        return self.conv2(y) + y


def test_costs_of_a_small_network_match_hand_counts():
    torch.manual_seed(0)
    net = _Small().eval()
    rows = bench.roofline(_StubEngine(net, 2), None, torch.device("cpu"), PEAKS, 20.0)
    _check_rows(rows)
    by = {r["layer"]: r for r in rows}
    conv, conv2, fc = by["conv conv"], by["conv2 conv"], by["fc linear"]
    assert conv["output_shape"] == [2, 8, 4, 4] and conv2["output_shape"] == [2, 8, 8, 8]
    assert conv["flop"] == 2 * (2 * 8 * 4 * 4) * 4 * 9  # stride 2, padding 1
    assert conv2["flop"] == 2 * (2 * 8 * 8 * 8) * (8 // 2) * 9  # two groups
    assert fc["flop"] == 2 * 2 * 256 * 16
    # input, weight, bias and output of the first convolution, fp32, each once
    assert conv["bytes"] == 4 * (2 * 4 * 8 * 8 + 8 * 4 * 9 + 8 + 2 * 8 * 4 * 4)
    assert conv["bound"] == "memory"  # 3.2 FLOP/B, below the ridge of 0.2 TFLOP/s at 20 GB/s
    # the functional operators between the modules are rows of their own
    ops = {r["op"] for r in rows}
    assert {"aten::relu", "aten::upsample_nearest2d", "aten::add"} <= ops
    assert by["add (after conv2)"]["bytes"] == 3 * 4 * 2 * 8 * 8 * 8
    # a long table merges runs of small operators for printing: totals kept, convolutions and matmuls kept apart
    short = bench.compact(rows, limit=1)
    assert len(short) < len(rows)
    assert sum(r["time_ms"] for r in short) == pytest.approx(sum(r["time_ms"] for r in rows))
    assert sum(r["bytes"] for r in short) == sum(r["bytes"] for r in rows)
    assert [r for r in short if r["kind"] in ("conv", "matmul")] == [r for r in rows if r["kind"] in ("conv", "matmul")]
    _check_rows(short)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_roofline_of_the_resnet_engine(precision):
    from pxdbg.models.engine import GanEngine
    from pxdbg.shared import registry

    info = registry.get("resnet")
    device = torch.device("cpu")
    engine = GanEngine(bench.trained_like("resnet", None), device, precision, info=info, images_per_call=1)
    bandwidth = bench.memory_bandwidth_gbs(device, mib=32)
    assert bandwidth > 0
    outputs, hooks = _conv_layers(engine.fast_net)
    try:
        bench.forward_once(engine, bench.call_latents(engine, None, device))
    finally:
        for h in hooks:
            h.remove()
    rows = bench.roofline(engine, None, device, PEAKS, bandwidth)
    _check_rows(rows)
    convs = [r for r in rows if r["kind"] == "conv"]
    for path, nbytes in outputs.items():  # every convolution of the network, with at least its output's bytes
        mine = [r for r in convs if path in r["modules"]]
        assert mine, f"no roofline row for the convolution {path}"
        assert all(r["bytes"] >= r["calls"] * nbytes for r in mine)
    # the first block's 3x3 convolution (256 -> 256 channels at 16 x 48) by hand, on one image
    flop = 2 * (256 * 16 * 48) * 256 * 9
    assert any(r["flop"] == flop and r["output_shape"] == [1, 256, 16, 48] for r in convs)
    # the functional operators between the layers are there (resnet spends much of its time in them)
    assert any(r["op"] == "aten::add" for r in rows) and any("batch_norm" in r["op"] for r in rows)
    forward_s = bench.forward_seconds(engine, None, device)
    summary = bench.roofline_summary(rows, bandwidth, forward_s)
    assert 0 <= summary["memory_bound_share"] <= 1
    # the profiled and the unprofiled time are printed side by side; their ratio follows the machine's load (it
    # was 0.11 once on a shared 2-core machine), so only what the summary adds up is checked
    assert summary["ops_ms"] == pytest.approx(sum(r["time_ms"] for r in rows))
    assert summary["forward_ms"] == pytest.approx(1e3 * forward_s) and forward_s > 0
    assert summary["roof_ms"] == pytest.approx(sum(r["roof_ms"] for r in rows))


def test_cli_flag():
    args = build_parser().parse_args(["bench", "--quick", "--roofline"])
    assert args.roofline and args.quick and not args.producer
