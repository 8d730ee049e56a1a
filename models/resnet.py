"""resnet: the published residual WGAN-GP generator (6,648,097 parameters).

Latent (N, 96) -> Linear -> (N, 256, 8, 24) -> five residual up-blocks (256, 256, 128, 64, 32 -> 16 channels)
-> batch norm, ReLU, conv 3x3 -> tanh -> (N, 1, 256, 768). Parameter names match the Belle II checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pxdbg.models.common import LATENT_DIM, seed_generate


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return h + self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


#: Channels after the linear layer and after each of the five up-blocks: the published network.
CHANNELS = (256, 256, 128, 64, 32, 16)


class Model(nn.Module):
    def __init__(self, channels: tuple[int, ...] = CHANNELS) -> None:
        """``channels`` other than CHANNELS give a narrower network of the same structure (tests); checkpoints
        fit only the published one."""
        super().__init__()
        self.bottom = channels[0]
        self.fc = nn.Linear(LATENT_DIM, channels[0] * 8 * 24)
        self.blocks = nn.ModuleList(Block(cin, cout) for cin, cout in zip(channels, channels[1:]))
        self.norm = nn.BatchNorm2d(channels[-1])
        self.conv = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.bottom, 8, 24)
        for block in self.blocks:
            x = block(x)
        return torch.tanh(self.conv(F.relu(self.norm(x))))


def generate(model: Model) -> torch.Tensor:
    """One PXD frame: a (40, 250, 768) uint8 tensor on the CPU."""
    return seed_generate(model)
