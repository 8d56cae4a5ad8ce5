"""How peaky are the trained model's self-attention scores, and how fast does Sinkhorn converge on them?

    .venv/bin/python -m experiments.digits.score_stats

For every attn1 layer, at a few noise levels, on conditional inputs x = x0 + sigma * noise: the std
of S = QK^T/sqrt(d), the entropy of softmax(S) and of the adversarial plan, and the mean per-row L1
distance of the T-iteration plan to a converged one (T = 200), all with `lib_asag.sinkhorn.sinkhorn_plan`.
"""
from __future__ import annotations

import math

import torch

from lib_asag.layers import find_self_attention
from lib_asag.sinkhorn import sinkhorn_plan

from .data import split
from .tiny_unet import softmax_attention
from .train_diffusion import load_denoiser

SIGMAS = (10.0, 1.0, 0.1)
ITERATIONS = (0, 1, 3, 10)


def capture_scores(denoiser, x: torch.Tensor, sigma: float, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """S per attn1 layer, shape (B*heads, N, N), captured through the attention hook."""
    scores = {}
    layers = find_self_attention(denoiser.model)
    for ref, module in layers.items():
        def grab(q, k, v, heads, name=str(ref)):
            b, n, inner = q.shape
            d = inner // heads
            qh, kh = (t.reshape(b, n, heads, d).transpose(1, 2).reshape(b * heads, n, d) for t in (q, k))
            scores[name] = qh @ kh.transpose(1, 2) / math.sqrt(d)
            return softmax_attention(q, k, v, heads)
        module.attention_override = grab
    try:
        with torch.no_grad():
            denoiser(x + sigma * torch.randn_like(x), torch.full((len(x),), sigma), y)
    finally:
        for module in layers.values():
            module.attention_override = None
    return scores


def entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())


def main() -> None:
    torch.manual_seed(0)
    denoiser = load_denoiser()
    x, y = split()["train"]
    x, y = x[:64], y[:64]
    print("layer      sigma  std(S)  H(softmax)  H(asag T=3)  log N   |P_T - P_200|_1 for T = " +
          ", ".join(map(str, ITERATIONS)))
    for sigma in SIGMAS:
        for name, s in capture_scores(denoiser, x, sigma, y).items():
            ref = sinkhorn_plan(s, iterations=200, epsilon=1.0)
            dists = [float((sinkhorn_plan(s, iterations=t, epsilon=1.0) - ref).abs().sum(-1).mean())
                     for t in ITERATIONS]
            print(f"{name:10s} {sigma:5g}  {float(s.std(dim=(-2, -1)).mean()):6.2f}  {entropy(s.softmax(-1)):9.3f}  "
                  f"{entropy(sinkhorn_plan(s, iterations=3, epsilon=1.0)):10.3f}  {math.log(s.shape[-1]):5.3f}   "
                  + "  ".join(f"{d:.3f}" for d in dists))


if __name__ == "__main__":
    main()
