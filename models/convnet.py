"""convnet: the published convolutional WGAN-GP generator (20,444,865 parameters).

Latent (N, 96) -> Linear -> (N, 512, 8, 24) -> five x (conv 5x5, batch norm, ReLU, nearest x2 upsampling)
-> conv 5x5 -> tanh -> (N, 1, 256, 768). Parameter names match the Belle II checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from pxdbg.models.common import LATENT_DIM, seed_generate


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 5, 1, 2), nn.BatchNorm2d(cout), nn.ReLU(), nn.Upsample(scale_factor=2)]


#: Channels after the linear layer and after each of the five stages: the published network.
CHANNELS = (512, 512, 256, 128, 64, 32)


class Model(nn.Module):
    def __init__(self, channels: tuple[int, ...] = CHANNELS) -> None:
        """``channels`` other than CHANNELS give a narrower network of the same structure (tests); checkpoints
        fit only the published one."""
        super().__init__()
        self.bottom = channels[0]
        self.fc = nn.Linear(LATENT_DIM, channels[0] * 8 * 24)
        self.features = nn.Sequential(
            *(layer for cin, cout in zip(channels, channels[1:]) for layer in _stage(cin, cout)),
            nn.Conv2d(channels[-1], 1, 5, 1, 2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.features(self.fc(z).view(-1, self.bottom, 8, 24)))


def generate(model: Model) -> torch.Tensor:
    """One PXD frame: a (40, 250, 768) uint8 tensor on the CPU."""
    return seed_generate(model)
