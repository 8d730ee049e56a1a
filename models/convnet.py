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


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(LATENT_DIM, 512 * 8 * 24)
        self.features = nn.Sequential(
            *_stage(512, 512),
            *_stage(512, 256),
            *_stage(256, 128),
            *_stage(128, 64),
            *_stage(64, 32),
            nn.Conv2d(32, 1, 5, 1, 2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.features(self.fc(z).view(-1, 512, 8, 24)))


def generate(model: Model) -> torch.Tensor:
    """One PXD frame: a (40, 250, 768) uint8 tensor on the CPU."""
    return seed_generate(model)
