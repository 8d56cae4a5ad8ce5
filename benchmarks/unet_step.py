"""One sampling step of CFG, PAG and ASAG on a full-size SD1.5-shaped UNet with random weights.

The UNet is diffusers' UNet2DConditionModel built from the SD1.5 config written below (nothing is
downloaded; weights are random, which is fine for timing). The chosen self-attention (attn1)
layers get `PerturbableAttention`, a diffusers attention processor that runs ordinary SDPA
attention unless told to perturb some rows, with either
  - "identity": PAG's perturbation, attention output = V (q and k are not even projected), or
  - "sinkhorn": ASAG's, lib_asag.sinkhorn.adversarial_sinkhorn_attention on the projected q, k, v.
Modes of one step:
  cfg                 one UNet call on batch 2 (uncond, cond)
  pag / asag          cfg + one extra call on the cond row (batch 1) with the layers perturbed
  pag_b / asag_b      one call on batch 3 (uncond, cond, cond) perturbing only the third row
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lib_asag.guidance import asag_guidance
from lib_asag.sinkhorn import adversarial_sinkhorn_attention

SD15_UNET_CONFIG = dict(  # stable-diffusion-v1-5 unet/config.json, written out (no hub access)
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                    "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)

LAYER_SETS = {
    # PAG's (and our SD1.x default) layer: the middle block's self-attention.
    "mid": ("mid_block.attentions.0.transformer_blocks.0.attn1",),
    # A heavier selection: the middle block plus the three of up_blocks.1 (output_blocks 3-5 in ldm).
    "mid_up1": ("mid_block.attentions.0.transformer_blocks.0.attn1",
                *(f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn1" for i in range(3))),
    # Worst case for the Sinkhorn layer: the three full-resolution output attentions (output_blocks
    # 9-11), N = latent side^2 tokens (1024 at 32x32 latents), 8 heads of 40.
    "up3": tuple(f"up_blocks.3.attentions.{i}.transformer_blocks.0.attn1" for i in range(3)),
}


@dataclass
class Perturbation:
    """What the installed processors do right now; shared by all of them."""

    mode: str | None = None  # None (plain attention), "identity" (PAG) or "sinkhorn" (ASAG)
    first_row: int = 0  # rows from this one on are perturbed
    iterations: int = 3
    epsilon: float = 1.0
    calls: dict[str, int] = field(default_factory=dict)


class PerturbableAttention:
    """diffusers attention processor: SDPA attention, or a perturbation on rows >= first_row."""

    def __init__(self, state: Perturbation, plain: Callable) -> None:
        self.state = state
        self.plain = plain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        state = self.state
        if state.mode is None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("PerturbableAttention only handles self-attention of transformer blocks")
        state.calls[state.mode] = state.calls.get(state.mode, 0) + 1
        kept = hidden_states[:state.first_row]
        perturbed = self.perturb(attn, hidden_states[state.first_row:])
        if len(kept) == 0:
            return perturbed
        return torch.cat([self.plain(attn, kept, None, None, temb), perturbed])

    def perturb(self, attn, hidden: torch.Tensor) -> torch.Tensor:
        if self.state.mode == "identity":
            mixed = attn.to_v(hidden)
        else:
            mixed = adversarial_sinkhorn_attention(attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden),
                                                   heads=attn.heads, iterations=self.state.iterations,
                                                   epsilon=self.state.epsilon)
        return attn.to_out[1](attn.to_out[0](mixed)) / attn.rescale_output_factor


def build_unet(device: torch.device, dtype: torch.dtype, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD15_UNET_CONFIG).to(device=device, dtype=dtype).eval()


def install(unet, layer_names: tuple[str, ...], state: Perturbation) -> None:
    """Our processor on the chosen attn1 layers, diffusers' SDPA processor everywhere else."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    modules = dict(unet.named_modules())
    unet.set_attn_processor(AttnProcessor2_0())
    for name in layer_names:
        modules[name].set_processor(PerturbableAttention(state, AttnProcessor2_0()))


@dataclass
class StepInputs:
    latents: torch.Tensor  # (1, 4, h, w)
    uncond: torch.Tensor  # (1, 77, 768)
    cond: torch.Tensor
    timestep: torch.Tensor
    cfg_scale: float = 7.0
    scale: float = 3.0


def make_inputs(latent_size: int, device: torch.device, dtype: torch.dtype, seed: int = 1) -> StepInputs:
    g = torch.Generator().manual_seed(seed)
    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    return StepInputs(rand(1, 4, latent_size, latent_size), rand(1, 77, 768), rand(1, 77, 768),
                      torch.tensor([500], device=device))


def step_functions(unet, state: Perturbation, x: StepInputs) -> dict[str, Callable[[], torch.Tensor]]:
    """One guided prediction per mode (eps space here; the combination costs the same anywhere)."""

    def call(latents, context, mode=None, first_row=0):
        state.mode, state.first_row = mode, first_row
        try:
            return unet(latents, x.timestep, encoder_hidden_states=context).sample
        finally:
            state.mode = None

    def cfg():
        uncond, cond = call(x.latents.repeat(2, 1, 1, 1), torch.cat([x.uncond, x.cond])).chunk(2)
        return uncond + x.cfg_scale * (cond - uncond)

    def serial(mode):
        def step():
            uncond, cond = call(x.latents.repeat(2, 1, 1, 1), torch.cat([x.uncond, x.cond])).chunk(2)
            perturbed = call(x.latents, x.cond, mode)
            return asag_guidance(uncond, cond, perturbed, cfg_scale=x.cfg_scale, scale=x.scale)
        return step

    def batched(mode):
        def step():
            uncond, cond, perturbed = call(x.latents.repeat(3, 1, 1, 1), torch.cat([x.uncond, x.cond, x.cond]),
                                           mode, first_row=2).chunk(3)
            return asag_guidance(uncond, cond, perturbed, cfg_scale=x.cfg_scale, scale=x.scale)
        return step

    return {"cfg": cfg, "pag": serial("identity"), "asag": serial("sinkhorn"),
            "pag_b": batched("identity"), "asag_b": batched("sinkhorn")}
