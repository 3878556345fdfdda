"""A PilotNet-sized CNN (NVIDIA's end-to-end steering net: 5 convolutions, 4 dense layers, ~252k parameters
at 3x66x200), taking float32 RGB in [0, 1] and returning the steering wheel angle in degrees.
Frames are standardized per image inside the model.

The target's train mean and scale are buffers of the model: training regresses the standardized target, the
registered model answers in degrees, and a loaded model needs nothing but its weights.
"""

from __future__ import annotations

import torch
from torch import nn


class PilotNet(nn.Module):
    def __init__(
        self,
        height: int = 66,
        width: int = 200,
        target_mean: float = 0.0,
        target_scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 5, stride=2),
            nn.ELU(),
            nn.Conv2d(24, 36, 5, stride=2),
            nn.ELU(),
            nn.Conv2d(36, 48, 5, stride=2),
            nn.ELU(),
            nn.Conv2d(48, 64, 3),
            nn.ELU(),
            nn.Conv2d(64, 64, 3),
            nn.ELU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, height, width)).numel()
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, 100),
            nn.ELU(),
            nn.Linear(100, 50),
            nn.ELU(),
            nn.Linear(50, 10),
            nn.ELU(),
            nn.Linear(10, 1),
        )
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_scale", torch.tensor(float(target_scale)))

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        """The standardized steering of a batch (N,): what training regresses.

        Each frame is standardized by its own mean and contrast first: night frames average ~0.1 and the
        markets' cameras differ by ~17 % in gain, while the lane geometry is what carries the steering.
        """
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.head(self.features((x - mean) / std)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardized(x) * self.target_scale + self.target_mean


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
