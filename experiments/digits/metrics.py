"""Sample-quality metrics on classifier features: Frechet distance, k-NN precision/recall, IS, accuracy.

The Frechet distance is FID's formula (Heusel et al. 2017) on our classifier's features instead of
Inception's. Precision/recall follow Kynkaenniemi et al. 2019: a sample is "precise" if it falls
inside the union of k-NN balls of the real features, a real point is "recalled" if it falls inside
the union of k-NN balls of the generated features.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (N, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every point to its k-th nearest neighbour within the same set (self excluded)."""
    dist = torch.cdist(x, x)
    return dist.kthvalue(k + 1, dim=1).values


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `points` inside at least one ball (centre, radius)."""
    return (torch.cdist(points, centres) <= radii[None]).any(dim=1).float().mean().item()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real_t, fake_t = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    precision = _coverage(fake_t, real_t, _knn_radii(real_t, k))
    recall = _coverage(real_t, fake_t, _knn_radii(fake_t, k))
    return precision, recall


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): high when samples are confidently classified and classes are diverse."""
    probs = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    marginal = probs.mean(0, keepdims=True)
    return float(np.exp((probs * (np.log(probs) - np.log(marginal))).sum(1).mean()))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())
