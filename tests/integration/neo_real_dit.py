"""ASAG on Forge Neo's own diffusion-transformer classes, in its own process; run by test_neo_real.py.

Usage: python neo_real_dit.py <Neo tree> <repo root> [case ...]. Prints one JSON line; exits non-zero on a failed
check, 3 when a host dependency is missing.

Forge Neo (Haoming02/sd-webui-forge-classic, branch `neo`) cannot be cloned here; the tree is assembled outside
the repository from its files (docs/hosts-forks.md says which files, from where, at which commits). Each case's real
class is built small with random weights -- Neo's model files (ComfyUI-derived) hard-code no widths -- wrapped in
the real `backend.modules.k_model.KModel` and `backend.patcher.unet.UnetPatcher`, and sampled through the real
`backend.sampling.sampling_function.sampling_function_inner` with ASAG's clone and post-CFG function (the
Forge adapter), batched and separate, in both scopes, against the float64 reference of forks_real_dit.py.

Cases, read from Neo's loader (`backend/loader.py`) and engines (`backend/diffusion_engine/*.py`):
- flux: `backend/nn/flux.py` IntegratedFluxTransformer2DModel, Flux.1 dev (guidance embedding, pooled vector);
- klein: the same class built as the loader builds Flux.2 / Klein (`Flux2Transformer2DModel` in the loader: global
  modulation, SiLU MLP, patch 1, 4 RoPE axes; huggingface_guess detection.py), lib_asag family flux;
- chroma: `backend/nn/chroma.py` IntegratedChromaTransformer2DModel, whose blocks are nn/flux.py's
  DoubleStreamBlock / SingleStreamBlock (imported from backend.nn.flux, built with modulation=False);
- anima: `backend/nn/anima.py` Anima(MiniTrainDIT), 5-D latents (the Wan VAE's frame axis);
- lumina2 / zimage: `backend/nn/lumina.py` NextDiT as Lumina 2 and as Z-Image (z_image_modulation, time_scale
  1000, tokens padded to a multiple of 32), lib_asag family lumina2;
- qwen_image: `backend/nn/qwen.py` QwenImageTransformer2DModel, 5-D latents;
- wan: `backend/nn/wan.py` WanModel (t2v), 5-D latents; self-attention calls the module's `attention` wrapper,
  cross-attention `attention_function` directly.
The reference swaps the global each case's chosen modules reach (`NEO.swaps`, read from those files) while a chosen
module's forward runs (the whole block, `self_attn` for Anima and Wan, whose cross-attention uses the same global).
"""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forks_real_dit import B, Host, host_api, check_cases, init_weights  # noqa: E402

# case -> (module whose global the chosen modules call, the global, layout)
SWAPS = {"flux": ("backend.nn.flux", "attention_function", "heads"),
         "klein": ("backend.nn.flux", "attention_function", "heads"),
         "chroma": ("backend.nn.flux", "attention_function", "heads"),  # its blocks are flux.py's
         "anima": ("backend.nn.anima", "attention_function", "heads"),  # via torch_attention_op
         "lumina2": ("backend.nn.lumina", "attention_function", "heads"),
         "zimage": ("backend.nn.lumina", "attention_function", "heads"),
         "qwen_image": ("backend.nn.qwen", "attention_function", "flat"),
         "wan": ("backend.nn.wan", "attention_function", "flat")}  # via the module's `attention`


def flow(shift: float, multiplier: float):
    """Neo's PredictionDiscreteFlow, built from a model config's sampling_settings as its engines do."""
    from backend.modules import k_prediction
    return k_prediction.PredictionDiscreteFlow(SimpleNamespace(sampling_settings={"shift": shift,
                                                                                  "multiplier": multiplier}))


def build(case: str, seed: int):
    """(diffusion model, predictor, latent channels, context width) of the real class, small, built as Neo's loader
    builds the diffusion model (backend/loader.py): inside `using_forge_operations` (torch.nn's layers swapped for
    Forge's, whose weights stay None until a state dict is loaded; the operations recorded in dynamic_args["ops"],
    which KModel reads), float32 on the CPU, then `backend.state_dict.load_state_dict` of a random state dict (the
    same class built with torch's own layers, init_weights)."""
    from backend.operations import using_forge_operations
    from backend.state_dict import load_state_dict
    plain = _build(case)[0]
    init_weights(plain, seed)
    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32, manual_cast_enabled=False):
        spec = _build(case)
    model, weights = spec[0], plain.state_dict()
    load_state_dict(model, weights)
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights), case
    model.storage_dtype = model.computation_dtype = torch.float32
    return spec


def _build(case: str):
    from backend.modules import k_prediction
    if case in ("flux", "klein"):
        from backend.nn.flux import IntegratedFluxTransformer2DModel
        if case == "flux":
            model = IntegratedFluxTransformer2DModel(in_channels=16, out_channels=16, vec_in_dim=16, context_in_dim=32,
                                                     hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2,
                                                     depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000,
                                                     patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
            spec = (model, k_prediction.PredictionFlux(mu=1.0), 16, 32)
        else:
            model = IntegratedFluxTransformer2DModel(in_channels=32, out_channels=32, vec_in_dim=None, context_in_dim=32,
                                                     hidden_size=64, mlp_ratio=3.0, num_heads=2, depth=2,
                                                     depth_single_blocks=2, axes_dim=[8, 8, 8, 8], theta=2000,
                                                     patch_size=1, qkv_bias=False, guidance_embed=False,
                                                     txt_ids_dims=[3], global_modulation=True, mlp_silu_act=True,
                                                     ops_bias=False, default_ref_method="index", ref_index_scale=10.0)
            spec = (model, k_prediction.PredictionFlux2(SimpleNamespace(sampling_settings={})), 32, 32)
    elif case == "chroma":
        from backend.nn.chroma import IntegratedChromaTransformer2DModel
        model = IntegratedChromaTransformer2DModel(in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
                                                   mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2,
                                                   axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True,
                                                   in_dim=64, out_dim=64, hidden_dim=64, n_layers=2, txt_ids_dims=[],
                                                   vec_in_dim=None)
        spec = (model, k_prediction.PredictionFlux(mu=1.0), 16, 32)
    elif case == "anima":
        from backend.nn.anima import Anima
        model = Anima(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                      patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=2, num_heads=2,
                      crossattn_emb_channels=32, pos_emb_cls="rope3d", use_adaln_lora=True, adaln_lora_dim=32,
                      rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_enable_fps_modulation=False)
        spec = (model, flow(3.0, 1.0), 16, 32)
    elif case in ("lumina2", "zimage"):
        from backend.nn.lumina import NextDiT
        common = dict(patch_size=2, in_channels=16, n_layers=2, n_refiner_layers=1, n_heads=2, multiple_of=16,
                      qk_norm=True, cap_feat_dim=32)
        if case == "lumina2":
            model = NextDiT(dim=64, n_kv_heads=1, ffn_dim_multiplier=4.0, axes_dims=[8, 12, 12],
                            axes_lens=[300, 512, 512], **common)
        else:  # z_image_modulation: the adaLN input is min(dim, 256) wide, the timestep embedding 256: dim >= 256
            model = NextDiT(dim=256, n_kv_heads=2, ffn_dim_multiplier=8.0 / 3.0, axes_dims=[32, 48, 48],
                            axes_lens=[1536, 512, 512], rope_theta=256.0, z_image_modulation=True, time_scale=1000.0,
                            pad_tokens_multiple=32, **common)
        spec = (model, flow(6.0 if case == "lumina2" else 3.0, 1.0), 16, 32)
    elif case == "qwen_image":
        from backend.nn.qwen import QwenImageTransformer2DModel
        model = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                            attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                                            axes_dims_rope=(8, 12, 12))
        spec = (model, flow(3.1, 1.0), 16, 32)
    elif case == "wan":
        from backend.nn.wan import WanModel
        model = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=64, ffn_dim=128,
                         freq_dim=256, text_dim=32, out_dim=16, num_heads=2, num_layers=2)
        spec = (model, flow(8.0, 1000.0), 16, 32)
    else:
        raise ValueError(case)
    return spec


def make_cond(condition, case, crossattn, g, strength=None):
    """What Neo's backend.sampling.condition.compile_conditions makes of the engine's conditioning: Flux's engine
    returns {crossattn, vector, guidance} (dev: distilled CFG), every other engine here the text tensor alone."""
    cond = crossattn
    if case == "flux":
        cond = {"crossattn": crossattn, "vector": torch.randn(B, 16, generator=g), "guidance": torch.full((B,), 3.5)}
    entry = condition.compile_conditions(cond)[0]
    if strength is not None:
        entry["strength"] = strength
    return entry


NEO = Host("Forge Neo", build, SWAPS, make_cond,
           frames=("anima", "qwen_image", "wan"),
           flags={"anima": {"is_wan": True}, "qwen_image": {"is_wan": True}, "wan": {"is_wan": True}},  # the engines'
           image_tokens={"klein": 64},  # patch 1 on 8x8 latents; the others 2x2 patches: 16
           family_of={"klein": "flux", "zimage": "lumina2"},
           config=SimpleNamespace(memory_usage_factor=1.0))

CASES = [("flux", "double.0, single.1", ["double_blocks.0", "single_blocks.1"], 1.0, 1),
         ("klein", "double.1, single.0", ["double_blocks.1", "single_blocks.0"], 4.0, 1),
         ("chroma", "double.0, single.1", ["double_blocks.0", "single_blocks.1"], 4.0, 1),
         ("anima", "block.1", ["blocks.1.self_attn"], 4.0, 1),
         ("anima", "block.0-1", ["blocks.0.self_attn", "blocks.1.self_attn"], 1.0, 2),
         ("lumina2", "layer.0-1", ["layers.0", "layers.1"], 4.0, 1),
         ("zimage", "layer.1", ["layers.1"], 4.0, 1),
         ("qwen_image", "transformer.0-1", ["transformer_blocks.0", "transformer_blocks.1"], 4.0, 1),
         ("wan", "block.0", ["blocks.0.self_attn"], 4.0, 1)]


def main(tree: str, repo: str, cases: list[str]) -> None:
    # modules_forge/packages on sys.path as Neo's launcher puts it (its gguf, huggingface_guess import themselves by
    # top-level name); backend/stream.py reads the WebUI's modules.devices.device
    api = host_api(tree, repo, ["--cpu"], [os.path.join(tree, "modules_forge", "packages")],
                   {"devices": {"device": torch.device("cpu")}})
    from lib_asag import hosts
    results = check_cases(api, NEO, CASES, cases)
    print(json.dumps({"host": NEO.name, "host_file": api.host_file, "cases": results,
                      "startup": hosts.startup_line()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or sorted(SWAPS))
