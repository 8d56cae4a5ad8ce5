"""Which self-attention layers ASAG perturbs: names, the grammar users type, presets per family.

In a UNet a layer is one `attn1` of a `BasicTransformerBlock` (ldm, sgm, ldm_patched and Forge's
backend all share the module layout). In a diffusion transformer it is the self-attention of one
block, a direct child list of the model (lib_asag/perturb/families.py): `joint_blocks.N` (MMDiT: SD3,
SD3.5), `double_blocks.N` / `single_blocks.N` (Flux, Flux.2, Chroma), `blocks.N` (Anima / Cosmos-Predict2,
Wan: their `self_attn` only), `layers.N` (Lumina 2, Z-Image), `transformer_blocks.N` (Qwen-Image).
Users name them as

    middle            every transformer block of the middle block
    middle.0          transformer block 0 of the middle block
    input.7           every transformer block of input block 7
    output.0-2        output blocks 0, 1 and 2 (only those that have self-attention)
    input.7.1         input block 7, transformer block 1
    joint.7-9         MMDiT joint blocks 7, 8 and 9
    double.0-18       Flux/Chroma double-stream blocks; single.0-37 likewise
    block.7-9         Anima / Wan blocks; layer.7-9 Lumina 2 / Z-Image; transformer.7-9 Qwen-Image
    all               everything

comma (or semicolon) separated; `in`/`down`, `mid`, `out`/`up` are accepted as aliases. A full module
path such as `output_blocks.3.1.transformer_blocks.0.attn1` works too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from .perturb.families import BLOCK_ATTRIBUTES, PRESETS, ROWS as FAMILY_ROWS, by_model

UNET_BLOCKS = ("input", "middle", "output")
DIT_BLOCKS = tuple(BLOCK_ATTRIBUTES)  # "joint", "double", "single", ... from the family table
BLOCKS = UNET_BLOCKS + DIT_BLOCKS
_ALIASES = {"input": "input", "in": "input", "down": "input", "middle": "middle", "mid": "middle",
            "output": "output", "out": "output", "up": "output", **{block: block for block in DIT_BLOCKS}}
_MODULE_RE = re.compile(r"(?:^|\.)(?:(input|output)_blocks\.(\d+)|(middle)_block)\.\d+\.transformer_blocks\.(\d+)\.attn1$")
_DIT_PREFIX = {attribute: prefix for prefix, attribute in BLOCK_ATTRIBUTES.items()}
_DIT_MODULE_RE = re.compile(rf"(?:^|\.)({'|'.join(map(re.escape, _DIT_PREFIX))})\.(\d+)$")
_RANGE = r"(\d+)(?:-(\d+))?"
_TOKEN_RE = re.compile(rf"^([a-z]+)(?:\.{_RANGE}(?:\.{_RANGE})?)?$")

# Presets per family live in the family table (lib_asag/perturb/families.py, pure data).
DEFAULT_PRESET = "middle"  # the UNet default; each family's default is the first entry of its presets


class LayerSpecError(ValueError):
    """A layer name the user typed does not parse or does not exist in the loaded model."""


@dataclass(frozen=True, order=True)
class LayerRef:
    """One self-attention layer: block kind, block number (0 for middle), transformer index."""

    block: str
    block_id: int
    index: int

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.is_dit and self.index != 0:
            raise ValueError(f"a {self.block} block has one attention, index must be 0, got {self.index}")

    @property
    def is_dit(self) -> bool:
        """A transformer block's joint attention rather than a UNet attn1."""
        return self.block in DIT_BLOCKS

    @property
    def module_path(self) -> str:
        """Path of the attn1 module (UNet) or of the block (DiT) under `model.diffusion_model`."""
        if self.is_dit:
            return f"{BLOCK_ATTRIBUTES[self.block]}.{self.block_id}"
        parent = "middle_block" if self.block == "middle" else f"{self.block}_blocks.{self.block_id}"
        return f"{parent}.1.transformer_blocks.{self.index}.attn1"

    @property
    def patch_key(self) -> tuple[str, int, int]:
        """Key of Forge's attn1 replace patches: (block name, block number, transformer index)."""
        return (self.block, self.block_id, self.index)

    def __str__(self) -> str:
        if self.is_dit:
            return f"{self.block}.{self.block_id}"
        return f"middle.{self.index}" if self.block == "middle" else f"{self.block}.{self.block_id}.{self.index}"


def layer_from_module_name(name: str) -> LayerRef | None:
    """The LayerRef of a module name from `named_modules()`, or None if it is no UNet attn1 / DiT block."""
    dit = _DIT_MODULE_RE.search(name)
    if dit is not None:
        return LayerRef(_DIT_PREFIX[dit.group(1)], int(dit.group(2)), 0)
    match = _MODULE_RE.search(name)
    if match is None:
        return None
    io_block, block_id, middle, index = match.groups()
    return LayerRef(middle or io_block, 0 if middle else int(block_id), int(index))


def layers_from_module_names(names: Iterable[str]) -> list[LayerRef]:
    return sorted({ref for ref in map(layer_from_module_name, names) if ref is not None})


def find_self_attention(diffusion_model: torch.nn.Module) -> dict[LayerRef, torch.nn.Module]:
    """Every UNet attn1 module, or every DiT block (joint/double/single/...), of a model, keyed by LayerRef.

    DiT blocks count only as direct children of the model's block lists: a UNet's `...transformer_blocks.0`
    or Anima's text adapter `llm_adapter.blocks.0` (Forge Neo) are no DiT blocks."""
    found = {}
    for name, module in diffusion_model.named_modules():
        ref = layer_from_module_name(name)
        if ref is not None and not (ref.is_dit and name != ref.module_path):
            found[ref] = module
    return dict(sorted(found.items()))


def _span(first: str | None, last: str | None) -> range | None:
    if first is None:
        return None
    lo, hi = int(first), int(last if last is not None else first)
    if hi < lo:
        raise LayerSpecError(f"range {lo}-{hi} is backwards")
    return range(lo, hi + 1)


@dataclass(frozen=True)
class _Token:
    """One parsed token: `block` (None = all) with optional block numbers `ids` and transformer
    `indices` (the middle block has indices only), or one exact `module`."""

    block: str | None = None
    ids: range | None = None
    indices: range | None = None
    module: LayerRef | None = None

    def matches(self, ref: LayerRef) -> bool:
        if self.module is not None:
            return ref == self.module
        return ((self.block is None or ref.block == self.block)
                and (self.ids is None or ref.block_id in self.ids)
                and (self.indices is None or ref.index in self.indices))

    def missing(self, available: list[LayerRef]) -> list[tuple[str, int | None, int]]:
        """What the token's numbers name that `available` lacks: (block, block number, transformer
        index) with None for the block number of the middle block, index -1 for a whole block."""
        if self.module is not None or self.block is None or (self.ids is None and self.indices is None):
            return []
        mine = [ref for ref in available if ref.block == self.block]
        if self.ids is None:  # middle.N: transformer indices of the one middle block
            present = {ref.index for ref in mine}
            return [(self.block, None, i) for i in self.indices if i not in present]
        out = []
        for block_id in self.ids:
            present = {ref.index for ref in mine if ref.block_id == block_id}
            if not present:
                out.append((self.block, block_id, -1))
            elif self.indices is not None:
                out.extend((self.block, block_id, i) for i in self.indices if i not in present)
        return out


def _parse(token: str) -> _Token:
    """One token of the grammar; raises LayerSpecError with an example of what would work."""
    module_ref = layer_from_module_name(token)
    if module_ref is not None:
        return _Token(module=module_ref)
    if token == "all":
        return _Token()
    match = _TOKEN_RE.match(token)
    if match is None or match.group(1) not in _ALIASES:
        raise LayerSpecError(f"cannot read ASAG layer {token!r}; write e.g. 'middle', 'input.7', "
                             "'output.0-2', 'input.7.1', 'joint.7-9', 'double.0-18', 'single.3' or 'all'")
    block = _ALIASES[match.group(1)]
    first, second = _span(match.group(2), match.group(3)), _span(match.group(4), match.group(5))
    if block in DIT_BLOCKS:
        if second is not None:
            raise LayerSpecError(f"{token!r}: a {block} block takes one number (or range), the block index")
        return _Token(block, ids=first)
    if block == "middle":
        if second is not None:
            raise LayerSpecError(f"{token!r}: the middle block takes one number, its transformer index")
        return _Token(block, indices=first)
    return _Token(block, ids=first, indices=second)


def _matcher(token: str):
    """A predicate over LayerRef for one token of the grammar."""
    return _parse(token).matches


def split_spec(spec: str) -> list[str]:
    return [t.strip().lower() for t in re.split(r"[,;\n]", spec) if t.strip()]


def check_spec(spec: str) -> list[str]:
    """Syntax errors of a layer spec, without a model (for parameter validation)."""
    errors = []
    for token in split_spec(spec):
        try:
            _matcher(token)
        except LayerSpecError as e:
            errors.append(str(e))
    return errors


def format_layers(refs: Iterable[LayerRef]) -> str:
    """A compact human summary, e.g. 'input.1-2,4-5; middle; output.3-11'."""
    groups: dict[str, list[int]] = {}
    for ref in sorted(set(refs)):
        ids = groups.setdefault(ref.block, [])
        if not ids or ids[-1] != ref.block_id:
            ids.append(ref.block_id)
    parts = []
    for block, ids in groups.items():
        if block == "middle":
            parts.append("middle")
            continue
        runs, start = [], ids[0]
        for prev, cur in zip(ids, ids[1:] + [None]):
            if cur is None or cur != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = cur
        parts.append(f"{block}.{','.join(runs)}")
    return "; ".join(parts) or "none"


def _runs(numbers: Iterable[int]) -> str:
    """'0-2,5' for [0, 1, 2, 5]."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def format_missing(missing: Iterable[tuple[str, int | None, int]]) -> list[str]:
    """Names in the grammar for what `_Token.missing` found, runs merged: ['double.8-9', 'input.7.2-3']."""
    whole: dict[str, list[int]] = {}
    inner: dict[tuple[str, int | None], list[int]] = {}
    for block, block_id, index in missing:
        if index < 0:
            whole.setdefault(block, []).append(block_id)
        else:
            inner.setdefault((block, block_id), []).append(index)
    names = [f"{block}.{_runs(ids)}" for block, ids in whole.items()]
    names += [f"{block}.{_runs(idx)}" if block_id is None else f"{block}.{block_id}.{_runs(idx)}"
              for (block, block_id), idx in inner.items()]
    return names


@dataclass(frozen=True)
class Resolution:
    """The layers a spec names in one model, and what it names that the model lacks (`skipped`, in
    the grammar: a range past the model's last block, or UNet blocks without self-attention)."""

    layers: list[LayerRef]
    skipped: list[str]


def resolve(spec: str, available: Iterable[LayerRef]) -> Resolution:
    """The layers of `available` named by `spec`. Every token must name at least one of them (else
    LayerSpecError listing what the model has); numbers a token names beyond them are `skipped`."""
    available = sorted(set(available))
    tokens = split_spec(spec)
    if not tokens:
        raise LayerSpecError("no layers given for ASAG")
    chosen: set[LayerRef] = set()
    missing: list[tuple[str, int | None, int]] = []
    for token in tokens:
        parsed = _parse(token)
        hits = [ref for ref in available if parsed.matches(ref)]
        if not hits:
            raise LayerSpecError(f"ASAG layer {token!r} does not exist in this model; it has self-attention "
                                 f"in: {format_layers(available)}")
        chosen.update(hits)
        missing.extend(m for m in parsed.missing(available) if m not in missing)
    return Resolution(sorted(chosen), format_missing(missing))


def resolve_layers(spec: str, available: Iterable[LayerRef]) -> list[LayerRef]:
    """The layers of `available` named by `spec` (see `resolve`, which also says what was skipped)."""
    return resolve(spec, available).layers


def is_preset(name: str) -> bool:
    return any(name.strip() in presets for presets in PRESETS.values())


def default_preset(family: str) -> str:
    """The preset used when no layers are given: the first of the family's presets."""
    return next(iter(PRESETS.get(family, PRESETS["sd1"])))


def preset_spec(family: str, name_or_spec: str) -> str:
    """Expand a preset name of `family` (empty = the family's default preset); anything else is a spec."""
    presets: Mapping[str, str] = PRESETS.get(family, PRESETS["sd1"])
    key = name_or_spec.strip() or default_preset(family)
    return presets.get(key, key)


def model_family(sd_model: object, available: Iterable[LayerRef] = (), diffusion_model: object = None) -> str:
    """'sdxl' | 'sd2' | 'sd1' | 'sd3' | 'flux' | 'chroma' | ... A diffusion transformer whose class the family
    table lists (`diffusion_model` given) by its class first: the host's flags can mislead (Forge Neo's Anima,
    Qwen-Image and Wan engines all set `is_wan`, backend/diffusion_engine/anima.py, qwen.py, wan.py). Else from
    the flags the hosts set on the loaded model (A1111 modules/sd_models.py load_model, Forge forge_loader.py /
    backend/diffusion_engine; the flags are the family table's, a later row winning), else from the layout: the
    first DiT row whose block prefixes the model has (joint = MMDiT, double/single = Flux), and only SDXL has
    several transformer blocks in the middle block."""
    available = list(available)
    row = by_model(diffusion_model) if diffusion_model is not None and any(r.is_dit for r in available) else None
    if row is not None:
        return row.name
    for row in reversed(FAMILY_ROWS):
        if any(getattr(sd_model, flag, False) for flag in row.flags):
            return row.name
    blocks = {ref.block for ref in available}
    for row in FAMILY_ROWS:
        if blocks & set(row.blocks):
            return row.name
    middle = [ref for ref in available if ref.block == "middle"]
    return "sdxl" if len(middle) > 1 else "sd1"
