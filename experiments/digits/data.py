"""The data: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), scaled to [-1, 1].

It ships inside the scikit-learn wheel, so the experiment needs no download. One fixed stratified
split serves both models: the diffusion model and the feature classifier train on `train`, and the
classifier's accuracy is measured on `test`.
"""
from __future__ import annotations

import numpy as np
import torch

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES          # the "no label" index used for classifier-free guidance
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All images as (N, 1, 8, 8) float32 in [-1, 1] and labels (N,) int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(digits.target.astype(np.int64))


def split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (x, y), "test": (x, y)}: a stratified 75/25 split with a fixed seed."""
    from sklearn.model_selection import train_test_split

    images, labels = load_digits_tensors()
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                           random_state=SPLIT_SEED, stratify=labels.numpy())
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return {"train": (images[idx_train], labels[idx_train]), "test": (images[idx_test], labels[idx_test])}
