"""Score a set of samples with the feature classifier, with an on-disk cache of samples and scores.

Samples are cached under `.cache/asag_digits/` (git-ignored) keyed by method, seed, count and the
weights file's content, so re-running the experiment only generates what is missing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .classifier import DigitClassifier
from .edm import Denoiser
from .metrics import accuracy, frechet_distance, inception_score, precision_recall
from .sampling import Method, generate

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "asag_digits"


@dataclass
class Reference:
    """The classifier and the real-data features everything is compared with."""

    classifier: DigitClassifier
    real_features: np.ndarray
    weights_id: str
    extra: dict = field(default_factory=dict)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feats = self.classifier.features(images)
        probs = self.classifier.head(feats).softmax(1)
        return feats.numpy(), probs.numpy()


def file_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def score(ref: Reference, images: torch.Tensor, labels: torch.Tensor, conditional: bool) -> dict:
    feats, probs = ref.embed(images)
    precision, recall = precision_recall(ref.real_features, feats)
    result = {"fd": frechet_distance(ref.real_features, feats), "precision": precision, "recall": recall,
              "is": inception_score(probs)}
    if conditional:
        result["acc"] = accuracy(probs, labels.numpy())
    return result


def cache_path(weights_id: str, method: Method, seed: int, n: int, conditional: bool) -> Path:
    key = f"{weights_id}|{method.key(conditional)}|seed={seed}|n={n}"
    return CACHE / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".pt")


def run_setting(denoiser: Denoiser, ref: Reference, method: Method, seed: int, n: int,
                conditional: bool) -> dict:
    """Metrics (and sampling seconds) of one method on one seed set, cached."""
    path = cache_path(ref.weights_id, method, seed, n, conditional)
    if path.exists():
        saved = torch.load(path)
        images, labels, seconds = saved["images"], saved["labels"], saved["seconds"]
    else:
        images, labels, seconds = generate(denoiser, method, seed, n, conditional)
        images = images.half()  # the cached precision, so fresh and cached runs score alike
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save({"method": method.key(conditional), "seed": seed, "images": images, "labels": labels,
                    "seconds": seconds}, path)
    result = score(ref, images.float(), labels, conditional)
    result["seconds"] = seconds
    return result


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
