"""Generator models: upstream-compatible state_dicts, checkpoint safety, payload store, determinism."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pxdbg import models
from pxdbg.models import CheckpointError, convnet, resnet
from pxdbg.models.common import output_to_adc, sparsify
from pxdbg.shared import payloads
from pxdbg.shared.frame import SparseFrame

CONVNET_KEYS = (
    ["fc.weight", "fc.bias"]
    + [f"features.{i}.{p}" for i in (0, 4, 8, 12, 16, 20) for p in ("weight", "bias")]
    + [
        f"features.{i}.{p}"
        for i in (1, 5, 9, 13, 17)
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
RESNET_KEYS = (
    ["fc.weight", "fc.bias", "conv.weight", "conv.bias"]
    + [f"norm.{p}" for p in BN]
    + [f"blocks.{b}.{c}.{p}" for b in range(5) for c in ("conv", "conv1", "conv2") for p in ("weight", "bias")]
    + [f"blocks.{b}.{n}.{p}" for b in range(5) for n in ("norm1", "norm2") for p in BN]
)


def _randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and non-trivial batch-norm statistics, so eval mode is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.is_floating_point() and name.endswith("weight") and t.dim() == 1:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
    return net.eval()


def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
    )


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def reference_convnet(sd, z):
    """convnet forward written from the architecture document, on a bare state_dict (of any width)."""
    x = F.linear(z, sd["fc.weight"], sd["fc.bias"]).view(z.shape[0], -1, 8, 24)
    for conv, bn in ((0, 1), (4, 5), (8, 9), (12, 13), (16, 17)):
        x = F.conv2d(x, sd[f"features.{conv}.weight"], sd[f"features.{conv}.bias"], padding=2)
        x = _up(F.relu(_bn(x, sd, f"features.{bn}")))
    return torch.tanh(F.conv2d(x, sd["features.20.weight"], sd["features.20.bias"], padding=2))


def reference_resnet(sd, z):
    x = F.linear(z, sd["fc.weight"], sd["fc.bias"]).view(z.shape[0], -1, 8, 24)
    for b in range(5):
        p = f"blocks.{b}"
        h = _up(F.relu(_bn(x, sd, p + ".norm1")))
        h = F.conv2d(h, sd[p + ".conv1.weight"], sd[p + ".conv1.bias"], padding=1)
        h = F.conv2d(F.relu(_bn(h, sd, p + ".norm2")), sd[p + ".conv2.weight"], sd[p + ".conv2.bias"], padding=1)
        x = h + F.conv2d(_up(x), sd[p + ".conv.weight"], sd[p + ".conv.bias"])
    x = F.relu(_bn(x, sd, "norm"))
    return torch.tanh(F.conv2d(x, sd["conv.weight"], sd["conv.bias"], padding=1))


@pytest.mark.parametrize(
    ("module", "keys", "n_params"),
    [(convnet, CONVNET_KEYS, 20_444_865), (resnet, RESNET_KEYS, 6_648_097)],
)
def test_upstream_architecture(module, keys, n_params):
    net = module.Model()
    sd = net.state_dict()
    assert sorted(sd) == sorted(keys)
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert sd["fc.weight"].shape == (98304 if module is convnet else 49152, 96)


@pytest.mark.parametrize("width", ["narrow", pytest.param("full", marks=pytest.mark.slow)])
@pytest.mark.parametrize(("module", "reference"), [(convnet, reference_convnet), (resnet, reference_resnet)])
def test_forward_is_the_architecture_written_out(module, reference, width, narrow_gan):
    net = _randomised(module.Model() if width == "full" else narrow_gan(module.__name__.rsplit(".", 1)[1]))
    sd = net.state_dict()
    z = torch.randn(2, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = net(z)
        ref = reference(sd, z)
    assert ours.shape == (2, 1, 256, 768)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_output_transform():
    y = torch.full((1, 256, 768), -1.0)
    y[0, 3, 0] = 1.0  # first row kept after the 3:-3 crop
    y[0, 2, 0] = 1.0  # cropped away
    y[0, 10, 5] = 0.0  # x = 0.5 -> 256**0.5 - 1 = 15
    y[0, 11, 5] = -0.999  # tiny -> below 1 ADC -> 0
    adc = output_to_adc(y)
    assert adc.shape == (1, 250, 768) and adc.dtype == torch.uint8
    assert adc[0, 0, 0] == 255 and adc[0, 7, 5] == 15 and adc[0, 8, 5] == 0
    assert int((adc > 0).sum()) == 2


def test_sparsify_matches_numpy(frame_factory):
    rng = np.random.default_rng(3)
    dense = np.stack([frame_factory(rng, occ)[1] for occ in (0.01, 0.0, 0.003)])
    frames = sparsify(torch.from_numpy(dense))
    assert [f == SparseFrame.from_dense(d) for f, d in zip(frames, dense)] == [True, True, True]


def _save(tmp_path, net, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


def test_load_checkpoint_and_identity(tmp_path):
    net = _randomised(resnet.Model(), seed=4)
    path = _save(tmp_path, net)
    m = models.load("resnet", path)
    assert not m.net.training
    assert not any(p.requires_grad for p in m.net.parameters())
    assert m.identity.model == "resnet" and m.identity.checkpoint_sha256 == payloads.sha256_file(path)
    assert m.identity.precision == "fp32"
    loaded = m.net.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v), k
    z = torch.randn(1, 96)
    with torch.inference_mode():  # the engine runs it in channels_last: the same maths, other rounding order
        torch.testing.assert_close(m.net(z), net(z), rtol=0, atol=1e-6)


def test_seed_contract_generate_shape():
    torch.manual_seed(0)
    m = models.load("parametric")
    out = m.generate()
    assert out.shape == (40, 250, 768) and out.dtype == torch.uint8 and out.device.type == "cpu"
    torch.manual_seed(0)
    assert torch.equal(out, m.generate())


def test_weights_only_refusal(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to load .*run code"):
        models.load("resnet", path)
    whole = tmp_path / "module.pt"
    torch.save(resnet.Model(), whole)  # a pickled module, not a state_dict
    with pytest.raises(CheckpointError, match="refused"):
        models.load("resnet", whole)


def test_wrong_architecture_names_the_right_model(tmp_path):
    path = _save(tmp_path, resnet.Model())
    with pytest.raises(CheckpointError, match="does not fit the model 'convnet'.*looks like .* 'resnet'"):
        models.load("convnet", path)
    trunc = {k: v for k, v in resnet.Model().state_dict().items() if k != "conv.bias"}
    torch.save(trunc, tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="missing: conv.bias"):
        models.load("resnet", tmp_path / "trunc.pt")
    not_sd = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_sd)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        models.load("resnet", not_sd)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        models.load("resnet", tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="unknown model 'gan'; the models are: convnet, resnet, .*parametric"):
        models.load("gan")


def test_no_public_weights_message():
    with pytest.raises(payloads.PayloadError, match="no public weights for resnet.*pxdbg payload add"):
        models.load("resnet")


def test_payload_store_add_find_and_checksum(tmp_path, monkeypatch):
    ckpt = _save(tmp_path, convnet.Model(), "mine.pt")
    store = tmp_path / "store"
    p = payloads.add(ckpt, "convnet", store=store)
    monkeypatch.setenv(payloads.ENV_VAR, str(store))
    m = models.load("convnet")
    assert m.identity.checkpoint_sha256 == p.sha256
    # a global tag without the payload
    with pytest.raises(payloads.PayloadError, match="global tag 'other'"):
        models.load("convnet", globaltag="other")
    # the setting wins over the environment
    store2 = tmp_path / "store2"
    p2 = payloads.add(_save(tmp_path, _randomised(convnet.Model(), 9), "mine2.pt"), "convnet", store=store2)
    payloads.set_stores([store2])
    assert payloads.find("convnet").sha256 == p2.sha256
    payloads.set_stores([])
    # a damaged file is refused with what to do
    with open(p.path, "ab") as f:
        f.write(b"x")
    with pytest.raises(payloads.PayloadError, match="checksum mismatch.*restore it or register"):
        models.load("convnet")


def test_shipped_parametric_payload_is_the_fit():
    p = payloads.find("parametric")
    assert p.store == payloads.BUILTIN_STORE
    shipped = models.read_state_dict(p.path)
    from pxdbg.models import parametric

    fitted = parametric.fit().state_dict()
    assert sorted(shipped) == sorted(fitted)
    for k in fitted:
        torch.testing.assert_close(shipped[k], fitted[k], rtol=0, atol=0)


@pytest.mark.slow
def test_gan_frames_independent_of_batch_composition(tmp_path):
    torch.set_num_threads(1)
    net = _randomised(convnet.Model(), seed=5)
    with torch.inference_mode():  # set the last bias so ~3 % of pixels are hit, like a trained generator
        last = net.features[20]
        pre = net.features[:20](net.fc(torch.randn(1, 96)).view(-1, 512, 8, 24))
        out = F.conv2d(pre, last.weight, None, padding=2).flatten()[::7]
        # a pixel is hit (>= 1 ADC) when tanh(out + bias) > 2 log(2) / log(256) - 1 = -0.75
        last.bias.fill_(float(torch.atanh(torch.tensor(-0.75)) - torch.quantile(out, 0.97)))
    m = models.load("convnet", _save(tmp_path, net))
    together = m.frames_for([(11, 0), (-3, 7)])
    alone = m.frames_for([(-3, 7)]) + m.frames_for([(11, 0)])
    assert together[0] == alone[1] and together[1] == alone[0]
    assert 0.005 * 7.68e6 < together[0].n_digits < 0.2 * 7.68e6
    assert together[0] != together[1]
