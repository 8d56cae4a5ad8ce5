"""Test helpers for the A1111 adapter tests (not a host module): conds, a sampling run through the
stand-in sampler, and an independent reference of CFG + ASAG (tests/sinkhorn_reference.py, not lib_asag).

The reference runs the plain stand-in model row by row for D_u and D_c, and a deep copy of it whose chosen
attn1 layers (SD3: JointBlocks, whose block mixing is re-done here) compute a textbook float64 Sinkhorn for
D_asag, then applies
    guided_i = D_u,i + cfg * sum_j w_j (D_c,j - D_u,i) + s * sum_j w_j (D_c,j - D_asag,j)
over the conds j of image i (AND-prompt weights w_j), with the host's mask blend.
"""
from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field

import torch


def sinkhorn_reference_forward(iterations: int, epsilon: float):
    """attn1 forward: float64 log-domain Sinkhorn on cost +QK^T/sqrt(d), uniform marginals, final row step."""

    def forward(self, x, context=None, mask=None, **kwargs):
        from sinkhorn_reference import sinkhorn_attention_reference  # tests/ is on sys.path under pytest
        ctx = x if context is None else context
        out = sinkhorn_attention_reference(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads, iterations,
                                           epsilon)
        return self.to_out(out.to(x.dtype))

    return forward


def joint_block_reference_forward(iterations: int, epsilon: float, scope: str = "joint"):
    """JointBlock forward: block_mixing of modules/models/sd3/mmdit.py re-done with the textbook float64 Sinkhorn
    over the joint text+image sequence (text first), from the host block's own pre/post_attention; scope
    "image": on its image x image block only, the text count taken from the block's own context stream."""

    def forward(self, context, x, c):
        from sinkhorn_reference import image_only_attention_reference, sinkhorn_attention_reference
        context_qkv, context_rest = self.context_block.pre_attention(context, c)
        x_qkv, x_rest = self.x_block.pre_attention(x, c)
        # v arrives as split_qkv leaves it, (B, N, heads, d); q and k flattened after QK-norm
        q, k, v = (torch.cat((a, b), dim=1).flatten(2) for a, b in zip(context_qkv, x_qkv))
        n_text, heads = context_qkv[0].shape[1], self.x_block.attn.num_heads
        if scope == "image":
            attn = image_only_attention_reference(q, k, v, heads, n_text, iterations, epsilon).to(q.dtype)
        else:
            attn = sinkhorn_attention_reference(q, k, v, heads, iterations, epsilon).to(q.dtype)
        if self.context_block.pre_only:
            context = None
        else:
            context = self.context_block.post_attention(attn[:, :n_text], *context_rest)
        return context, self.x_block.post_attention(attn[:, n_text:], *x_rest)

    return forward


@dataclass
class Case:
    """One generation: per image a list of (cond, weight); one uncond per image."""

    conds: list[list[tuple[object, float]]]
    unconds: list[object]
    x: torch.Tensor
    image_cond: torch.Tensor
    sigmas: torch.Tensor
    cfg: float = 5.0
    s_min_uncond: float = 0.0
    init_latent: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def text(model, tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    crossattn = torch.randn(tokens, 24, generator=g)
    if getattr(model, "is_sdxl", False) or getattr(model, "is_sd3", False):
        return {"crossattn": crossattn, "vector": torch.randn(12, generator=g)}
    return crossattn


def make_case(model, *, batch=2, and_prompt=True, cond_tokens=6, uncond_tokens=6, seed=0, steps=3,
              in_channels=4, image_channels=5, **kwargs) -> Case:
    conds, seed_i = [], seed * 100
    for i in range(batch):
        row = [(text(model, cond_tokens, seed_i + 1), 1.0)]
        if and_prompt and i == batch - 1:
            row = [(row[0][0], 0.7), (text(model, cond_tokens, seed_i + 2), 0.4)]
        conds.append(row)
        seed_i += 10
    unconds = [text(model, uncond_tokens, seed * 100 + 50 + i) for i in range(batch)]
    g = torch.Generator().manual_seed(seed + 7)
    sigmas = torch.linspace(8.0, 0.5, steps).tolist() + [0.0]
    x = torch.randn(batch, in_channels, 8, 8, generator=g) * sigmas[0]
    image_cond = torch.randn(batch, image_channels, 8, 8, generator=g)
    return Case(conds, unconds, x, image_cond, torch.tensor(sigmas), **kwargs)


def run_sampler(p, case: Case) -> torch.Tensor:
    """The stand-in A1111 path: KDiffusionSampler -> CFGDenoiserKDiffusion.forward -> callbacks."""
    from modules import prompt_parser
    from modules.sd_samplers_kdiffusion import KDiffusionSampler

    if case.mask is not None:
        p.init_latent, p.mask, p.nmask = case.init_latent, case.mask, 1.0 - case.mask
    sampler = p.sampler = KDiffusionSampler(p)  # processing.py keeps the sampler on p too
    with torch.no_grad():
        return sampler.sample(case.x.clone(), case.sigmas, prompt_parser.multicond(case.conds),
                              prompt_parser.plain(case.unconds), case.image_cond, case.cfg, case.s_min_uncond)


# ---------------------------------------------------------------------------------------------------------
# Independent reference

def _condition(model, cond, image_cond):
    key = model.model.conditioning_key
    if key == "crossattn-adm":
        return {"c_crossattn": [cond], "c_adm": image_cond}
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def _rows(cond):
    return {k: v[None] for k, v in cond.items()} if isinstance(cond, dict) else cond[None]


def _pad(cond, tokens, empty):
    """Reference of pad_cond_uncond for a shorter cond: append whole empty-prompt chunks."""
    have = (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]
    empty = empty["crossattn"] if isinstance(empty, dict) else empty
    repeats = (tokens - have) // empty.shape[1]
    if repeats <= 0:
        return cond
    pad = empty[0].repeat(repeats, 1)
    if isinstance(cond, dict):
        return {**cond, "crossattn": torch.cat([cond["crossattn"], pad])}
    return torch.cat([cond, pad])


def reference_run(model, case: Case, *, scale: float, layer_paths: list[str], iterations: int, epsilon: float,
                  pad: bool = False, skip_odd_steps_below: float = 0.0, rescale: float = 0.0,
                  scope: str = "joint") -> torch.Tensor:
    from k_diffusion.external import CompVisDenoiser

    def denoiser(m):  # CFGDenoiserKDiffusion.inner_model: the model's own create_denoiser() if it has one
        return m.create_denoiser() if hasattr(m, "create_denoiser") else CompVisDenoiser(m)

    plain = denoiser(model)
    perturbed_model = copy.deepcopy(model)
    modules = dict(perturbed_model.model.diffusion_model.named_modules())
    for path in layer_paths:
        forward = (joint_block_reference_forward(iterations, epsilon, scope) if path.startswith("joint_blocks.")
                   else sinkhorn_reference_forward(iterations, epsilon))
        modules[path].forward = types.MethodType(forward, modules[path])
    perturbed = denoiser(perturbed_model)
    tokens_u = (case.unconds[0]["crossattn"] if isinstance(case.unconds[0], dict) else case.unconds[0]).shape[0]

    x = case.x.clone()
    with torch.no_grad():
        for step in range(len(case.sigmas) - 1):
            sigma = case.sigmas[step]
            out = torch.empty_like(x)
            for i, conds in enumerate(case.conds):
                xi, si, ici = x[i:i + 1], sigma.reshape(1), case.image_cond[i:i + 1]
                c_cond = [(_pad(c, tokens_u, model.cond_stage_model_empty_prompt) if pad else c, w) for c, w in conds]
                d_c = [plain(xi, si, cond=_condition(model, _rows(c), ici)) for c, _ in c_cond]
                d_p = [perturbed(xi, si, cond=_condition(model, _rows(c), ici)) for c, _ in c_cond]
                skip = step % 2 == 1 and skip_odd_steps_below > 0 and float(sigma) < skip_odd_steps_below
                if skip:
                    d_u, cfg = d_c[0], 1.0
                else:
                    image_u = torch.zeros_like(ici) if model.model.conditioning_key == "crossattn-adm" else ici
                    d_u, cfg = plain(xi, si, cond=_condition(model, _rows(case.unconds[i]), image_u)), case.cfg
                cfg_only = d_u + sum(cfg * w * (dc - d_u) for dc, (_, w) in zip(d_c, c_cond))
                guided = cfg_only + sum(scale * w * (dc - dp) for dc, dp, (_, w) in zip(d_c, d_p, c_cond))
                if rescale:
                    ratio = d_c[0].std() / guided.std()
                    guided = guided * (rescale * ratio + 1 - rescale)
                if case.mask is not None:
                    blended = cfg_only * (1 - case.mask) + case.init_latent[i:i + 1] * case.mask
                    guided = blended + (guided - cfg_only) * (1 - case.mask)
                out[i] = guided[0]
            x = x + (x - out) / sigma * (case.sigmas[step + 1] - sigma)
    return x
