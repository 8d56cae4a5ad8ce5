"""A small CNN digit classifier: the feature extractor for the Frechet distance (our "Inception").

Trained on the same train split as the diffusion model; its held-out test accuracy is reported with
the results. Features are the 128-d penultimate activations. Training takes seconds on CPU, so the
classifier is retrained deterministically instead of being stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_CLASSES, split


class DigitClassifier(nn.Module):
    def __init__(self, width: int = 32, features: int = 128):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width * 16, features), nn.ReLU())
        self.head = nn.Linear(features, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One-pixel random shifts and mild noise, so features do not hinge on exact pixel positions."""
    shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return x + 0.05 * torch.randn(x.shape, generator=generator)


def train_classifier(epochs: int = 40, batch: int = 64, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train on the train split; returns the eval-mode model and its test accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = split()
    x, y = data["train"]
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    x_test, y_test = data["test"]
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy
