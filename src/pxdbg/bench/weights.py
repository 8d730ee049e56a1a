"""Random-weight GANs of the registry that look trained (a hit occupancy set on the output layer), for figures
that need no checkpoint."""

from __future__ import annotations


def trained_like(name: str, occupancy: float | None, seed: int = 0):
    """A random-weight GAN of model ``name`` (fp32, eval mode, CPU) whose output looks trained.

    An untrained generator's output varies by ~0.2 % around one value. With ``occupancy`` the output layer
    (the registry's ``output_layer``) is scaled so its pre-activation spreads with unit width (most pixels
    then sit deep below the threshold, as in trained models) and its bias is set so a share ``occupancy`` of
    the pixels is hit. A spectrally normalised output layer divides the scale out; its bias still sets the
    occupancy.
    """
    import importlib

    import torch

    from pxdbg.models.common import output_to_adc
    from pxdbg.models.fold import hit_threshold
    from pxdbg.shared import registry

    info = registry.get(name)
    module = importlib.import_module(info.module_name)
    with torch.random.fork_rng(devices=[]):  # the same weights in every run, torch's global state untouched
        torch.manual_seed(seed)
        net = module.Model().eval().requires_grad_(False)
    if occupancy is None:
        return net
    g = torch.Generator().manual_seed(0)
    k = info.images_per_event if info.conditional else 1
    z = torch.randn(k, info.latent_dim, generator=g)
    labels = torch.arange(k) % info.images_per_event

    def pre_activation():
        y = net(z, labels) if info.conditional else net(z)
        return torch.atanh(y[:, 0].clamp(-0.999999, 0.999999)).flatten()[::5]

    # a pixel is hit (>= 1 ADC, or the model's own cut) when tanh(pre) exceeds the model's threshold
    threshold = hit_threshold(getattr(module, "output_to_adc", output_to_adc))
    last = net.get_submodule(info.output_layer)
    with torch.inference_mode():
        pre = pre_activation()
        last.weight.mul_(1.0 / float(pre.std()))
        last.bias.copy_((last.bias - float(pre.mean())) / float(pre.std()))
        pre = pre_activation()
        last.bias.add_(float(torch.atanh(torch.tensor(threshold)) - torch.quantile(pre, 1 - occupancy)))
    return net


def gan_model(
    name: str, occupancy: float | None, precision: str = "fp32", device: str = "cpu", images_per_call: int | None = None
):
    """A :class:`BackgroundModel` of :func:`trained_like` weights (identity with a zero checksum)."""
    import torch

    from pxdbg import models

    net = trained_like(name, occupancy)
    return models.BackgroundModel(
        name, net.to(device), "0" * 64, None, torch.device(device), precision, images_per_call=images_per_call
    )
