"""Precision, memory layout and fixed call shapes of GAN producers, on the CPU (the GPU paths share them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_helpers import producers
from pxdbg import models
from pxdbg.consumer import BackgroundClient, IdentityMismatchError
from pxdbg.models import resnet
from pxdbg.models.common import sparsify
from pxdbg.models.engine import GanEngine
from pxdbg.shared.spec import ProducerSpec

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet.pt"
    torch.save(resnet.Model().state_dict(), path)
    return path


def test_precision_is_part_of_the_identity(ckpt):
    fp32 = models.load("resnet", ckpt)
    bf16 = models.load("resnet", ckpt, precision="bf16")
    assert fp32.identity.precision == "fp32" and bf16.identity.precision == "bf16"
    assert fp32.identity != bf16.identity and str(bf16.identity).endswith("/bf16")
    assert fp32.identity.checkpoint_sha256 == bf16.identity.checkpoint_sha256


def test_unsupported_precisions_are_refused(ckpt):
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        models.load("resnet", ckpt, precision="fp16")
    with pytest.raises(ValueError, match="'tf32' needs a CUDA device"):
        models.load("resnet", ckpt, precision="tf32")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        models.load("resnet", ckpt, precision="int4")
    with pytest.raises(ValueError, match="parametric model has no precision setting"):
        models.load("parametric", precision="bf16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            models.load("resnet", ckpt, device="cuda")
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            GanEngine(resnet.Model().eval(), torch.device("cpu"), cuda_graphs=True)


def test_bf16_runs_in_channels_last_and_stays_close_to_fp32(ckpt):
    torch.set_num_threads(1)
    fp32 = models.load("resnet", ckpt, images_per_call=4)
    bf16 = models.load("resnet", ckpt, precision="bf16", images_per_call=4)
    # the engines run their own folded copies in channels_last, bf16 with weights cast once
    assert fp32.engine.fast_net.get_submodule("conv").weight.is_contiguous(memory_format=torch.channels_last)
    assert bf16.engine.fast_net.get_submodule("blocks.0.conv1.phases.0").weight.dtype == torch.bfloat16
    assert fp32.net.conv.weight.dtype == bf16.net.conv.weight.dtype == torch.float32
    z = torch.randn(4, 96, generator=torch.Generator().manual_seed(3))
    a, b = fp32.engine.images(z), bf16.engine.images(z)
    assert a.shape == b.shape == (4, 250, 768) and a.dtype == b.dtype == torch.uint8
    # an untrained generator's output sits in a narrow band: bf16 moves some pixels by an ADC or so
    diff = (a.int() - b.int()).abs()
    assert diff.float().mean() < 2.0


def test_fixed_call_shape_pads_short_batches(ckpt):
    torch.set_num_threads(1)
    m = models.load("resnet", ckpt, images_per_call=4)
    z = torch.randn(6, 96, generator=torch.Generator().manual_seed(4))
    calls = []
    real_call = m.engine._call
    m.engine._call = lambda chunk: calls.append(chunk.shape[0]) or real_call(chunk)
    out = m.engine.images(z)
    assert calls == [4, 4], "every forward call has the engine's fixed shape"
    assert out.shape[0] == 6
    assert torch.equal(out[4:6], m.engine.images(torch.cat([z[4:6], torch.zeros(2, 96)]))[:2])


def test_sparsify_through_a_staging_copy_equals_the_plain_copy(frame_factory):
    rng = np.random.default_rng(5)
    dense = torch.from_numpy(np.stack([frame_factory(rng, occ)[1] for occ in (0.02, 0.001)]))
    staged, plain = sparsify(dense, staging=lambda t: t.cpu().numpy().copy()), sparsify(dense)
    assert len(staged) == len(plain) == 2 and all(f.n_digits > 0 for f in plain)
    assert all(a == b for a, b in zip(staged, plain, strict=True))


@pytest.mark.slow  # a real producer process that loads resnet in bf16
def test_consumer_refuses_a_producer_of_another_precision(tmp_path, ckpt):
    with producers(tmp_path) as p:
        ep = p.start("bf16", "--model", "resnet", "--checkpoint", str(ckpt), "--precision", "bf16")
        with BackgroundClient(
            [ep], spec=ProducerSpec(model="resnet", checkpoint=str(ckpt)), seed=1, connect_timeout=180
        ) as client:
            with pytest.raises(IdentityMismatchError, match="serves model resnet:.*/bf16.*asked for resnet:.*/fp32"):
                client.next()
