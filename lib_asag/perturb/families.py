"""One row per model family: everything ASAG needs to know about a backbone, as data.

A UNet row (SD1.x, SD2.x, SDXL) names its presets and the host flag that identifies it; its layers are the
`attn1` modules found by lib_asag.layers. A diffusion-transformer row also says where its blocks live, which
module-level attention function those blocks call (looked up in the module of the block's class, as Python
does for the block's code) and how that function is called, so that lib_asag/perturb/dit.py can perturb any
of them with one mechanism. Adding a family = one `Family(...)` below + a stand-in mirroring its real file +
tests. Pure data: no torch, no host module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

# How the blocks call their module-level attention function.
FLAT = "flat"              # attention(q, k, v, heads, mask=None): q/k (B, N, heads*d), v (B, N, heads*d) or
                           # (B, N, heads, d) -> (B, N, heads*d)   (MMDiT: A1111 mmdit.py, Forge mmditx.py)
HEADS_ROPE = "heads_rope"  # attention(q, k, v, pe[, mask=None, transformer_options=...]): head-major (B, heads, N, d)
                           # after QK-norm, RoPE applied by the function itself (`rope` below) -> (B, N, heads*d)
                           # (Flux, Chroma; Forge Neo adds the keyword arguments)
FUNCTION = "function"      # backend/attention.py attention_function(q, k, v, heads, mask=None, attn_precision=None,
                           # skip_reshape=False[, skip_output_reshape=False, transformer_options=...]) called
                           # directly: head-major (B, heads, N, d) when skip_reshape, else flat (B, N, heads*d);
                           # QK-norm and RoPE already applied by the caller -> (B, N, heads*d)
                           # (ersatzForge and Forge Neo model files)

ClassRef = tuple[str, str]  # (module, class name) as type(obj).__module__, type(obj).__name__


@dataclass(frozen=True)
class Family:
    """One model family. UNet rows leave every DiT field empty."""

    name: str                                   # "sd1" | "sdxl" | "sd3" | "flux" | ... (infotext, presets)
    presets: Mapping[str, str]                  # preset name -> layer spec; the first one is the default
    flags: tuple[str, ...] = ()                 # host flags on sd_model that name this family (is_sdxl, ...)
    models: tuple[ClassRef, ...] = ()           # diffusion-model classes of this family, on every host
    blocks: Mapping[str, str] = field(default_factory=dict)  # user prefix -> attribute ("joint" -> "joint_blocks")
    block_classes: tuple[ClassRef, ...] = ()    # the block classes whose attention calls are dispatched
    attention: str = "attention"                # module-level function the blocks call, in their class's module
    layout: str = FLAT                          # call layout of that function (FLAT / HEADS_ROPE / FUNCTION)
    # The same family as a fork ships it: (function, layout) tried in order when the block's module has no
    # `attention` (ersatzForge's chroma.py / mmditx.py call `attention_function` directly).
    fork_attentions: tuple[tuple[str, str], ...] = ()
    within: str = ""                            # hook this submodule of a chosen block instead of the block:
                                                # only calls made inside it are perturbed (Anima, Wan: the same
                                                # global serves `self_attn` and `cross_attn`)
    rope: tuple[str, str] | None = None         # (module, function) the dispatcher applies first (HEADS_ROPE)
    requires: tuple[str, ...] = ()              # other module-level names the block module must define
    label: str = ""                             # the family's name in messages (default: name in capitals)
    extra_attentions: str = ""                  # other calls of the same function inside a chosen block
    # Which calls of the function inside a chosen block are perturbed, from the call's (args, kwargs); None =
    # every call. For families whose blocks reach one global for self- and cross-attention (Cosmos/Anima:
    # only self_attn may change) a row gives a predicate here.
    perturbs: Callable[[tuple, dict], bool] | None = None
    # Non-empty: why this family's perturbed rows can never share the host's call (a dispatcher that cannot
    # split rows). The separate call is then its only mode, logged at INFO rather than as a fallback.
    only_separate: str = ""
    # The image-only scope (docs/method.md 2b): the submodule of the diffusion model whose output's dim 1 is the
    # number of image tokens (the patch embedder). In every joint sequence of these families the text tokens
    # come first, so a chosen block's call over N tokens has N - n_img text tokens. "" = the family has no such
    # split: with `within` its perturbed attention sees image tokens only (both scopes are the same), without
    # it the image-only scope is not available and the whole joint attention is perturbed (with a note).
    image_tokens: str = ""
    scale: float = 3.0                          # default ASAG scale and active window for this family
    window: tuple[float, float] = (0.0, 1.0)

    @property
    def has_scope(self) -> bool:
        """Whether the image-only and whole-joint scopes differ here and both can be run."""
        return bool(self.image_tokens)

    @property
    def is_dit(self) -> bool:
        return bool(self.blocks)

    @property
    def title(self) -> str:
        return self.label or self.name.upper()

    def call_sites(self) -> tuple[tuple[str, str], ...]:
        """(module-level function, layout) the blocks may call, in the order a block's module is searched."""
        return ((self.attention, self.layout), *self.fork_attentions)


_UNET_PRESETS = {"middle": "middle", "middle + output.3-5": "middle, output.3-5", "all": "all"}
_FLUX_PRESETS = {"double.7-9": "double.7-9", "double.7-9 + single.7-9": "double.7-9, single.7-9", "all": "all"}
_FLUX_BLOCKS = {"double": "double_blocks", "single": "single_blocks"}
# Diffusion transformers: ASAG in the 0.01-0.15 window of the steps, skip-layer guidance's practice, which the DiT
# experiment (docs/experiment.md, "Conclusions (DiT)") found the only window where the term helps without CFG and
# costs least on top of it; over the whole range the scale must be far below 1 there.
_DIT_WINDOW = (0.01, 0.15)

# Order matters twice: for host flags a later row wins (a model may carry an older family's flag too), for the
# layout fallback (no flag) the first DiT row whose block prefixes the model has.
ROWS: tuple[Family, ...] = (
    # SD1.x/SD2.x middle block: one transformer block, the PAG/SEG choice (docs/method.md).
    Family("sd1", _UNET_PRESETS, flags=("is_sd1",)),
    Family("sd2", _UNET_PRESETS, flags=("is_sd2",)),
    # SDXL middle block: ten transformer blocks at the lowest resolution.
    Family("sdxl", {"middle": "middle", "middle + output.0": "middle, output.0", "all": "all"}, flags=("is_sdxl",)),
    # Diffusion transformers: blocks 7-9, the skip-layer-guidance practice (docs/method.md), in _DIT_WINDOW.
    # SD3 / SD3.5: A1111 1.10 modules/models/sd3/mmdit.py and Forge backend/nn/mmditx.py (dfdcbab6): JointBlock
    # -> block_mixing -> module-level attention(q, k, v, heads) on the text+image rows; MMDiT-X (SD3.5 Medium)
    # calls it once more in its first blocks for the x-block's own self-attention `attn2`.
    Family("sd3", {"joint.7-9": "joint.7-9", "all": "all"}, flags=("is_sd3",),
           models=(("modules.models.sd3.mmdit", "MMDiT"), ("backend.nn.mmditx", "MMDiTX")),
           blocks={"joint": "joint_blocks"},
           block_classes=(("modules.models.sd3.mmdit", "JointBlock"), ("backend.nn.mmditx", "JointBlock")),
           layout=FLAT, requires=("block_mixing",), extra_attentions="x_block.attn2 (MMDiT-X)",
           fork_attentions=(("attention_function", FUNCTION),),  # ersatzForge mmditx.py: no `attention` left
           image_tokens="x_embedder", window=_DIT_WINDOW),
    # Flux: Forge backend/nn/flux.py, attention(q, k, v, pe) = apply_rope + attention_function. The same global
    # in ersatzForge fca12a2 (RoPE inline, same maths as its apply_rope; blocks fill preallocated scratch q/k/v)
    # and Forge Neo (attention(q, k, v, pe, mask=None, transformer_options={}); Neo builds this class for Flux.2
    # / Klein checkpoints too, so there they are this row: `double.N` / `single.N`).
    Family("flux", _FLUX_PRESETS, flags=("is_flux",), label="Flux",
           models=(("backend.nn.flux", "IntegratedFluxTransformer2DModel"),),
           blocks=_FLUX_BLOCKS,
           block_classes=(("backend.nn.flux", "DoubleStreamBlock"), ("backend.nn.flux", "SingleStreamBlock")),
           layout=HEADS_ROPE, rope=("backend.nn.flux", "apply_rope"), image_tokens="img_in", window=_DIT_WINDOW),
    # Chroma: Forge dfdcbab6 backend/nn/chroma.py imports flux's `attention`, so its blocks look up chroma's own
    # global; ersatzForge's chroma.py applies RoPE inline and calls its own `attention_function` (head-major);
    # Forge Neo's chroma.py (a port of ComfyUI v0.10.0) has no blocks of its own: it builds nn/flux.py's
    # DoubleStreamBlock / SingleStreamBlock (modulation=False, the modulations passed in as `vec`), which call
    # flux's `attention` -- listed here too, so they count as Chroma's blocks inside a Chroma model.
    Family("chroma", _FLUX_PRESETS, flags=("is_chroma",), label="Chroma",
           models=(("backend.nn.chroma", "IntegratedChromaTransformer2DModel"),),
           blocks=_FLUX_BLOCKS,
           block_classes=(("backend.nn.chroma", "DoubleStreamBlock"), ("backend.nn.chroma", "SingleStreamBlock"),
                          ("backend.nn.flux", "DoubleStreamBlock"), ("backend.nn.flux", "SingleStreamBlock")),
           layout=HEADS_ROPE, rope=("backend.nn.flux", "apply_rope"),
           fork_attentions=(("attention_function", FUNCTION),), image_tokens="img_in", window=_DIT_WINDOW),
    # ---- the forks' families (docs/hosts-forks.md: files, commits, block counts, why these defaults)
    # Anima and Cosmos-Predict2: ersatzForge backend/nn/cosmos_predict2.py MiniTrainDIT; Forge Neo
    # backend/nn/anima.py Anima(MiniTrainDIT). Block.self_attn and Block.cross_attn both call the module's
    # attention_function (head-major, after per-head QK-norm; RoPE for self-attention only): only self_attn's
    # calls are perturbed. 28 blocks (Anima, Predict2 2B).
    Family("anima", {"block.7-9": "block.7-9", "block.3-5": "block.3-5", "all": "all"}, label="Anima",
           models=(("backend.nn.cosmos_predict2", "MiniTrainDIT"), ("backend.nn.anima", "Anima"),
                   ("backend.nn.anima", "IntegratedAnimaTransformer"), ("backend.nn.anima", "MiniTrainDIT")),
           blocks={"block": "blocks"},
           block_classes=(("backend.nn.cosmos_predict2", "Block"), ("backend.nn.anima", "Block")),
           attention="attention_function", layout=FUNCTION, within="self_attn", window=_DIT_WINDOW),
    # Flux.2 (dev, Klein): ersatzForge backend/nn/flux2.py imports flux's `attention` (so its blocks look up
    # flux2's own global, flux's function). Only 5-8 double blocks (Klein 4B: double.0-4).
    Family("flux2", {"double.1-3": "double.1-3", "single.1-3": "single.1-3", "all": "all"}, label="Flux.2",
           flags=("is_flux2",), models=(("backend.nn.flux2", "IntegratedFlux2Transformer2DModel"),),
           blocks=_FLUX_BLOCKS,
           block_classes=(("backend.nn.flux2", "DoubleStreamBlock"), ("backend.nn.flux2", "SingleStreamBlock")),
           layout=HEADS_ROPE, rope=("backend.nn.flux", "apply_rope"), image_tokens="img_in", window=_DIT_WINDOW),
    # Lumina 2 and Z-Image: ersatzForge backend/nn/lumina2.py Lumina2DiT, Forge Neo backend/nn/lumina.py NextDiT.
    # `layers` run on [text, image] (the single-modality refiners are left out); JointAttention calls the
    # module's attention_function head-major after QK-norm, RoPE and the grouped-query repeat. No image-only
    # scope: Z-Image pads the image tokens to a multiple of 32 *after* them (lumina2.py patchify_and_embed,
    # pad_tokens_multiple), so the image block is not "the last n_img tokens" there.
    Family("lumina2", {"layer.7-9": "layer.7-9", "all": "all"}, label="Lumina 2 / Z-Image",
           models=(("backend.nn.lumina2", "Lumina2DiT"), ("backend.nn.lumina", "NextDiT")),
           blocks={"layer": "layers"},
           block_classes=(("backend.nn.lumina2", "JointTransformerBlock"), ("backend.nn.lumina", "JointTransformerBlock")),
           attention="attention_function", layout=FUNCTION, window=_DIT_WINDOW),
    # Wan 2.1 / 2.2 (text to image): ersatzForge backend/nn/wan.py WanModel. Self- and cross-attention of a
    # WanAttentionBlock both call `optimized_attention` (flat): only self_attn's calls are perturbed. Forge Neo's
    # wan.py (ComfyUI v0.3.64) has no `optimized_attention`: WanSelfAttention calls the module's `attention(*args,
    # **kwargs)` wrapper ("for Radial Attention", = attention_function) flat with heads= and transformer_options=,
    # the cross-attentions call attention_function itself.
    Family("wan", {"block.7-9": "block.7-9", "all": "all"}, label="Wan", flags=("is_wan",),
           models=(("backend.nn.wan", "WanModel"),),
           blocks={"block": "blocks"},
           block_classes=(("backend.nn.wan", "WanAttentionBlock"),),
           attention="optimized_attention", layout=FUNCTION, fork_attentions=(("attention", FUNCTION),),
           within="self_attn", window=_DIT_WINDOW),
    # Qwen-Image: Forge Neo backend/nn/qwen.py; one joint (txt first) flat attention_function call per block.
    Family("qwen_image", {"transformer.7-9": "transformer.7-9", "all": "all"}, label="Qwen-Image",
           models=(("backend.nn.qwen", "QwenImageTransformer2DModel"),),
           blocks={"transformer": "transformer_blocks"},
           block_classes=(("backend.nn.qwen", "QwenImageTransformerBlock"),),
           attention="attention_function", layout=FUNCTION, image_tokens="img_in", window=_DIT_WINDOW),
)

FAMILIES: dict[str, Family] = {row.name: row for row in ROWS}
PRESETS: dict[str, dict[str, str]] = {row.name: dict(row.presets) for row in ROWS}

def _block_attributes() -> dict[str, str]:
    """User prefix -> block-list attribute over all rows; one prefix must mean one attribute everywhere."""
    found: dict[str, str] = {}
    for row in ROWS:
        for prefix, attribute in row.blocks.items():
            if found.setdefault(prefix, attribute) != attribute:
                raise ValueError(f"block prefix {prefix!r} maps to {found[prefix]!r} and {attribute!r}")
    return found


BLOCK_ATTRIBUTES: dict[str, str] = _block_attributes()  # "joint" -> "joint_blocks", "double" -> ...


def _key(obj: object) -> ClassRef:
    return type(obj).__module__, type(obj).__name__


def by_model(diffusion_model: object) -> Family | None:
    """The DiT family whose model class (or a base class: Neo's Anima(MiniTrainDIT)) this is -- the class decides:
    Forge's Flux and Chroma engines set no `is_flux` / `is_chroma` flag (backend/diffusion_engine/flux.py,
    chroma.py) -- or None."""
    for cls in type(diffusion_model).__mro__:
        key = (cls.__module__, cls.__name__)
        row = next((row for row in ROWS if key in row.models), None)
        if row is not None:
            return row
    return None


def by_block(block: object, model_family: Family | None = None) -> Family | None:
    """The DiT family whose block class this is, or None: `model_family` (the family of the model the block is
    in) when its row lists the class -- one block class can serve two families (Forge Neo's Chroma is built of
    nn/flux.py's blocks) -- else the first row that lists it."""
    key = _key(block)
    if model_family is not None and key in model_family.block_classes:
        return model_family
    return next((row for row in ROWS if key in row.block_classes), None)


def effective_scope(family: Family | None, scope: str) -> str:
    """The scope that runs: "image" needs a text/image split (Family.image_tokens); where a family has none
    and its perturbed attention is joint (Lumina 2 / Z-Image) the whole joint attention is perturbed. Families
    whose perturbed attention sees image tokens only (`within`) and UNets run the same either way."""
    if scope == "image" and family is not None and family.is_dit and not family.has_scope and not family.within:
        return "joint"
    return scope


def dit_titles() -> list[str]:
    """The diffusion-transformer families ASAG knows, for messages."""
    return [row.title for row in ROWS if row.is_dit]
