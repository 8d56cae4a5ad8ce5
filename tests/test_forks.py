"""The maintained Forge forks on stand-ins of their own files: ersatzForge fca12a2 and Forge Neo (per-file
commits in tests/standins/neo/README.md). Each family's tiny random model runs through the host's sampling path
with ASAG set up by the Forge adapter (lib_asag/hosts/forge.py), batched and separate.

The reference is independent of lib_asag: the module global each family's blocks call -- read from the forks'
source (docs/hosts-forks.md), not from lib_asag's family table -- is replaced by a float64 Sinkhorn
(tests/sinkhorn_reference.py) while a chosen module's instance forward runs: the whole block, or only its
`self_attn` for Anima and Wan (their cross-attention calls the same global and must stay as it is); then
D = D_u + w (D_c - D_u) + s (D_c - D_asag) (D_c + s (D_c - D_asag) at CFG 1)."""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from lib_asag.params import ASAGParams
from asag_modes import float_tolerance
from sinkhorn_reference import image_only_attention_reference, sinkhorn_attention_reference

B, SIGMA, CFG = 2, 2.5, 5.0
STANDINS = Path(__file__).resolve().parent / "standins"

# (host, family) -> (model module, model class, global the chosen modules call (module, name), layout, hooked)
MODELS = {
    ("ersatzforge", "anima"): ("backend.nn.cosmos_predict2", "MiniTrainDIT", ("backend.nn.cosmos_predict2",
                                                                            "attention_function"), "self_attn"),
    ("ersatzforge", "flux"): ("backend.nn.flux", "IntegratedFluxTransformer2DModel",
                              ("backend.nn.flux", "attention_function"), ""),
    ("ersatzforge", "flux2"): ("backend.nn.flux2", "IntegratedFlux2Transformer2DModel",
                               ("backend.nn.flux", "attention_function"), ""),
    ("ersatzforge", "chroma"): ("backend.nn.chroma", "IntegratedChromaTransformer2DModel",
                                ("backend.nn.chroma", "attention_function"), ""),
    ("ersatzforge", "sd3"): ("backend.nn.mmditx", "MMDiTX", ("backend.nn.mmditx", "attention_function"), ""),
    ("ersatzforge", "lumina2"): ("backend.nn.lumina2", "Lumina2DiT", ("backend.nn.lumina2", "attention_function"),
                                 ""),
    ("ersatzforge", "wan"): ("backend.nn.wan", "WanModel", ("backend.nn.wan", "optimized_attention"), "self_attn"),
    ("neo", "anima"): ("backend.nn.anima", "Anima", ("backend.nn.anima", "attention_function"), "self_attn"),
    ("neo", "flux"): ("backend.nn.flux", "IntegratedFluxTransformer2DModel",
                      ("backend.nn.flux", "attention_function"), ""),
    ("neo", "lumina2"): ("backend.nn.lumina", "NextDiT", ("backend.nn.lumina", "attention_function"), ""),
    ("neo", "qwen_image"): ("backend.nn.qwen", "QwenImageTransformer2DModel",
                            ("backend.nn.qwen", "attention_function"), ""),
    # Neo's Chroma is built of nn/flux.py's blocks, which call flux's `attention` -> flux's attention_function
    ("neo", "chroma"): ("backend.nn.chroma", "IntegratedChromaTransformer2DModel",
                        ("backend.nn.flux", "attention_function"), ""),
    # Neo's WanSelfAttention calls the module's `attention` wrapper, which calls its attention_function
    ("neo", "wan"): ("backend.nn.wan", "WanModel", ("backend.nn.wan", "attention_function"), "self_attn"),
}


@pytest.fixture
def fork(standins):
    """use(host) -> the Forge adapter module with that fork's stand-ins first on sys.path."""
    def use(host: str):
        standins("forge_backend")
        standins(host)
        return importlib.import_module("lib_asag.hosts.forge")
    yield use
    module = sys.modules.get("lib_asag.hosts.forge")
    if module is not None:
        module.Adapter("forge_backend").teardown()


def build(host: str, family: str, seed: int = 0):
    module_name, cls_name, _, _ = MODELS[(host, family)]
    torch.manual_seed(seed)
    model = getattr(importlib.import_module(module_name), cls_name)()
    for module in model.modules():  # attention and its gates strong enough to matter in a tiny net
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.6 / module.in_features ** 0.25)
    return model


def processing(host: str, family: str, seed: int = 0, **flags):
    base = importlib.import_module("backend.diffusion_engine.base")
    sd_model = base.tiny_sd_model(family, seed=seed, diffusion_model=build(host, family, seed))
    for flag, value in flags.items():
        setattr(sd_model, flag, value)
    sampler = importlib.import_module("modules.sd_samplers_cfg_denoiser").Sampler(sd_model)
    return importlib.import_module("modules.processing").StableDiffusionProcessing(sd_model, sampler)


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=g) * SIGMA
    return x, torch.full((B,), SIGMA), torch.randn(B, 5, 8, generator=g), [torch.randn(B, 5, 8, generator=g)]


TEXT_TOKENS, IMAGE_TOKENS = 5, 16  # inputs(): 5 context tokens; an 8x8 latent in 2x2 patches


def run_step(p, cond_scale=CFG, step=1, total=10):
    """One model evaluation at progress step / total (0.1: inside a DiT's default window 0.01-0.15 and 0-1)."""
    denoiser = p.sampler.model_wrap_cfg
    denoiser.step, denoiser.total_steps = step, total
    x, sigma, uncond, cond = inputs()
    with torch.no_grad():
        return denoiser.forward(x, sigma, uncond, cond, cond_scale)


def batch_mode(monkeypatch, mode):
    if mode == "separate":
        monkeypatch.setenv("ASAG_BATCH", "0")
    else:
        monkeypatch.delenv("ASAG_BATCH", raising=False)


def reference_global(iterations, epsilon, image_only=False):
    """Float64 Sinkhorn with the signature of backend.attention.attention_function (head-major when
    skip_reshape, else flat with v possibly (B, N, heads, d)); `image_only`: on a joint call of TEXT_TOKENS +
    IMAGE_TOKENS, the image-only scope (text first)."""
    def attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                  **kwargs):
        assert mask is None and not skip_output_reshape
        if skip_reshape:
            q, k, v = (t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1) for t in (q, k, v))
        else:
            k, v = (t.reshape(q.shape[0], -1, q.shape[-1]) for t in (k, v))
        assert q.shape[1] in (IMAGE_TOKENS, TEXT_TOKENS + IMAGE_TOKENS), q.shape
        if image_only and q.shape[1] == TEXT_TOKENS + IMAGE_TOKENS:
            return image_only_attention_reference(q, k, v, heads, TEXT_TOKENS, iterations, epsilon).to(q.dtype)
        return sinkhorn_attention_reference(q, k, v, heads, iterations, epsilon).to(q.dtype)
    return attention


def reference_prediction(p, host, family, params, targets, cond_scale=CFG, image_only=False):
    unet = p.sd_model.forge_objects_original.unet
    model = unet.model
    calc = importlib.import_module("backend.sampling.sampling_function").calc_cond_uncond_batch
    x, sigma, uncond, cond = inputs()
    cond_list = [{"model_conds": {"c_crossattn": cond[0]}}]
    _, _, (module_name, global_name), _ = MODELS[(host, family)]
    module = sys.modules[module_name]
    tree = dict(model.diffusion_model.named_modules())
    chosen = [tree[name] for name in targets]
    with torch.no_grad():
        d_c, d_u = calc(model, cond_list, [{"model_conds": {"c_crossattn": uncond}}], x, sigma, unet.model_options)
        original, flag = getattr(module, global_name), []
        perturbed = reference_global(params.iterations, params.epsilon, image_only)
        setattr(module, global_name, lambda *a, **k: (perturbed if flag else original)(*a, **k))
        for target in chosen:
            def forward(*a, _target=target, **k):
                flag.append(1)
                try:
                    return type(_target).forward(_target, *a, **k)
                finally:
                    flag.pop()
            target.forward = forward
        try:
            d_asag, _ = calc(model, cond_list, None, x, sigma, unet.model_options)
        finally:
            setattr(module, global_name, original)
            for target in chosen:
                del target.forward
    guided = d_c if math.isclose(cond_scale, 1.0) else d_u + (d_c - d_u) * cond_scale
    return guided + params.scale * (d_c - d_asag), guided


def assert_host_untouched(p, host, family):
    _, _, (module_name, global_name), _ = MODELS[(host, family)]
    for name in {module_name, "backend.nn.flux"}:
        module = sys.modules.get(name)
        for attr in (global_name, "attention", "attention_function"):
            assert not getattr(getattr(module, attr, None), "asag", False), f"{name}.{attr} left swapped"
    for module in p.sd_model.forge_objects_original.unet.model.diffusion_model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


CASES = [
    ("ersatzforge", "anima", "block.1", ["blocks.1.self_attn"], CFG),
    ("ersatzforge", "anima", "block.0-1", ["blocks.0.self_attn", "blocks.1.self_attn"], 1.0),
    ("ersatzforge", "flux", "double.1, single.0", ["double_blocks.1", "single_blocks.0"], 1.0),
    ("ersatzforge", "flux2", "double.0, single.1", ["double_blocks.0", "single_blocks.1"], CFG),
    ("ersatzforge", "chroma", "double.0-1", ["double_blocks.0", "double_blocks.1"], CFG),
    ("ersatzforge", "chroma", "single.1", ["single_blocks.1"], 1.0),
    ("ersatzforge", "sd3", "joint.0-1", ["joint_blocks.0", "joint_blocks.1"], CFG),
    ("ersatzforge", "lumina2", "layer.0-1", ["layers.0", "layers.1"], CFG),
    ("ersatzforge", "wan", "block.1", ["blocks.1.self_attn"], CFG),
    ("neo", "anima", "block.0", ["blocks.0.self_attn"], CFG),
    ("neo", "flux", "double.0, single.1", ["double_blocks.0", "single_blocks.1"], 1.0),
    ("neo", "lumina2", "layer.1", ["layers.1"], CFG),
    ("neo", "qwen_image", "transformer.0-1", ["transformer_blocks.0", "transformer_blocks.1"], CFG),
    ("neo", "chroma", "double.0, single.1", ["double_blocks.0", "single_blocks.1"], CFG),
    ("neo", "wan", "block.1", ["blocks.1.self_attn"], CFG),
]


@pytest.mark.parametrize("host, family, spec, targets, cond_scale", CASES)
@pytest.mark.parametrize("mode", ["batched", "separate"])
@pytest.mark.parametrize("scope", ["image", "joint"])
def test_guided_prediction_equals_the_float64_reference(fork, host, family, spec, targets, cond_scale, mode, scope,
                                                        monkeypatch):
    forge = fork(host)
    batch_mode(monkeypatch, mode)
    p = processing(host, family)
    params = ASAGParams(enabled=True, layers=spec, scale=2.5, iterations=3, epsilon=0.7, scope=scope)
    assert forge.Adapter("forge_backend").setup(p, params) == []
    # Lumina 2 / Z-Image has no image-only scope: the whole joint attention runs, and the infotext says so
    no_scope = scope == "image" and family == "lumina2"
    assert ("not available" in p.extra_generation_params.get("ASAG note", "")) == no_scope
    got = run_step(p, cond_scale=cond_scale)
    calls = [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls]
    normal = [0] if math.isclose(cond_scale, 1.0) else [0, 1]
    assert calls == ([normal + [0]] if mode == "batched" else [normal, [0]]), calls
    expected, plain = reference_prediction(p, host, family, params, targets, cond_scale,
                                           image_only=scope == "image" and not no_scope)
    atol = float_tolerance(expected, family)
    assert float((expected - plain).abs().max()) > 100 * atol  # ASAG changes the prediction
    torch.testing.assert_close(got, expected.float(), atol=atol, rtol=1e-4)
    forge.Adapter("forge_backend").teardown(p)
    assert_host_untouched(p, host, family)


def sinkhorn_runs(monkeypatch, model, names):
    """In which of the named modules lib_asag's Sinkhorn attention ran (hooks mark the running module)."""
    from lib_asag import joint_scope, sinkhorn
    running, seen, handles = [], [], []
    for name, module in model.named_modules():
        if name in names:
            handles.append(module.register_forward_pre_hook(lambda *_, n=name: running.append(n)))
            handles.append(module.register_forward_hook(lambda *_: None if running.pop() else None))
    for owner, fn in ((sinkhorn, "adversarial_sinkhorn_attention"), (sinkhorn, "adversarial_sinkhorn_attention_heads"),
                      (joint_scope, "image_only_sinkhorn_attention"), (joint_scope, "image_only_sinkhorn_attention_heads")):
        original = getattr(owner, fn)

        def recording(*a, _original=original, **k):
            seen.append(running[-1] if running else None)
            return _original(*a, **k)

        monkeypatch.setattr(owner, fn, recording)
    return seen, handles


@pytest.mark.parametrize("host, family", [("ersatzforge", "anima"), ("ersatzforge", "wan"), ("neo", "anima"),
                                          ("neo", "wan")])
@pytest.mark.parametrize("mode", ["batched", "separate"])
def test_cross_attention_of_a_chosen_block_stays_as_it_is(fork, host, family, mode, monkeypatch):
    """The same module global serves self- and cross-attention in these blocks: only self_attn's call runs
    Sinkhorn, once per chosen block and model evaluation."""
    forge = fork(host)
    batch_mode(monkeypatch, mode)
    p = processing(host, family)
    assert forge.Adapter("forge_backend").setup(p, ASAGParams(enabled=True, layers="block.0-1")) == []
    model = p.sd_model.forge_objects.unet.model.diffusion_model
    names = [f"blocks.{i}.{part}" for i in range(2) for part in ("self_attn", "cross_attn")]
    seen, handles = sinkhorn_runs(monkeypatch, model, names)
    run_step(p)
    for handle in handles:
        handle.remove()
    assert sorted(seen) == ["blocks.0.self_attn", "blocks.1.self_attn"]


@pytest.mark.parametrize("family", ["anima", "qwen_image", "wan"])
def test_neo_presets_follow_the_model_class_not_its_is_wan_flag(fork, family):
    """Forge Neo's Anima, Qwen-Image and Wan engines all set `is_wan = True` (backend/diffusion_engine/anima.py,
    qwen.py, wan.py @ 0b824fed): the preset list offers the loaded model's own family, as the adapter resolves it."""
    fork("neo")
    from lib_asag import ui
    p = processing("neo", family, is_wan=True)
    assert ui.loaded_family(p.sd_model) == family
    assert ui.presets_for(ui.loaded_family(p.sd_model))[0] == {"anima": "block.7-9", "qwen_image": "transformer.7-9",
                                                               "wan": "block.7-9"}[family]


# ------------------------------------------------------------------------------------- caches that skip calls

def load_block_cache():
    path = STANDINS / "ersatzforge" / "extensions-builtin" / "ersatz_1stblocktea" / "scripts" / "blockcache.py"
    spec = importlib.util.spec_from_file_location("blockcache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("batch", ["batched", "separate"])
def test_ersatz_block_cache_never_serves_the_perturbed_pass(fork, batch, monkeypatch, caplog):
    """ersatzForge's First Block Cache swaps MiniTrainDIT.forward for one that may return a residual cached
    steps ago. ASAG's perturbed call runs the original forward (every chosen block runs Sinkhorn, every step),
    the cache's slots see only the host's calls, and the cache's patch is back afterwards."""
    forge = fork("ersatzforge")
    batch_mode(monkeypatch, batch)
    caplog.set_level("INFO", logger="asag")
    blockcache = load_block_cache()
    cache = blockcache.BlockCache()
    p = processing("ersatzforge", "anima")
    p.steps = 4
    cache.process(p, True, threshold=1e9, nocache_steps=1)
    cache.process_before_every_sampling(p, True)
    cls = type(p.sd_model.forge_objects.unet.model.diffusion_model)
    try:
        assert cls.forward is blockcache.patched_forward_cosmos_fbc
        every_step = dict(start=0.0, end=0.99)  # 0-1 would mean Anima's default window, 0.01-0.15
        assert forge.Adapter("forge_backend").setup(p, ASAGParams(enabled=True, layers="block.1", **every_step)) == []
        model = p.sd_model.forge_objects.unet.model
        seen, handles = sinkhorn_runs(monkeypatch, model.diffusion_model, ["blocks.1.self_attn"])
        for step in range(3):
            p.sampler.model_wrap_cfg.step = step
            x, _, uncond, cond = inputs()
            with torch.no_grad():
                p.sampler.model_wrap_cfg.forward(x, torch.full((B,), SIGMA - step * 0.5), uncond, cond, CFG)
            assert cls.forward is blockcache.patched_forward_cosmos_fbc
        for handle in handles:
            handle.remove()
        assert seen == ["blocks.1.self_attn"] * 3  # the perturbed pass ran in full at every step
        assert len(blockcache.BlockCache.residual) == 1  # one cache slot: the host's own call
        assert blockcache.BlockCache.skipped[0] >= 1  # and the cache did serve the host's call
        assert [c["cond_or_uncond"] for c in model.calls] == [[0, 1], [0]] * 3  # never batched into it
        if batch == "batched":  # says why it did not batch
            assert any("First Block Cache" in r.getMessage() for r in caplog.records)
    finally:
        cache.postprocess(p, None, True)
    assert cls.forward is blockcache.BlockCache.original_forward_cosmos


def test_neo_fbcache_key_is_not_passed_to_the_perturbed_call(fork, monkeypatch):
    """Forge Neo's First Block Cache (sd_forge_fbcache) configures the model through
    transformer_options["fbcache"]: ASAG's perturbed call goes without it and is never batched into a call
    that carries it."""
    forge = fork("neo")
    batch_mode(monkeypatch, "batched")
    p = processing("neo", "anima")
    unet = p.sd_model.forge_objects.unet
    unet.model_options.setdefault("transformer_options", {})["fbcache"] = {"threshold": 0.1}
    assert forge.Adapter("forge_backend").setup(p, ASAGParams(enabled=True, layers="block.0")) == []
    seen = []
    model = p.sd_model.forge_objects.unet.model
    apply_model = model.apply_model
    monkeypatch.setattr(model, "apply_model", lambda x, t, **c: seen.append(
        ("fbcache" in c["transformer_options"], list(c["transformer_options"]["cond_or_uncond"])))
        or apply_model(x, t, **c))
    run_step(p)
    assert seen == [(True, [0, 1]), (False, [0])]


# ---------------------------------------------------------------------------------------- detection, refusals

def git_checkout(root: Path, head: str, refs: dict[str, str] | None = None, packed: str | None = None) -> None:
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(head)
    for name, commit in (refs or {}).items():
        (git / "refs" / "heads" / name).write_text(commit + "\n")
    if packed is not None:
        (git / "packed-refs").write_text(packed)


def forge_tree(root: Path, *files: str) -> Path:
    for name in ("backend/patcher/base.py", "backend/sampling/sampling_function.py", *files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


COMMIT = "fca12a2884a5c14f2a9c175eadf452f86c5a5515"


@pytest.mark.parametrize("files, git, expected", [
    (("backend/nn/cosmos_predict2.py",), {"head": "ref: refs/heads/main\n", "refs": {"main": COMMIT}},
     "ersatzForge fca12a28"),
    (("backend/nn/lumina.py", "backend/nn/anima.py"),
     {"head": "ref: refs/heads/neo\n", "packed": f"# pack-refs with: peeled\n{'1' * 40} refs/heads/neo\n"},
     "Forge Neo 11111111"),
    ((), {"head": "dfdcbab6" + "0" * 32 + "\n"}, "Forge dfdcbab6"),
    (("backend/nn/cosmos_predict2.py",), None, "ersatzForge (commit unknown: no .git)"),
])
def test_fork_and_commit_read_from_disk(tmp_path, files, git, expected):
    from lib_asag.hosts import forks
    root = forge_tree(tmp_path, *files)
    if git is not None:
        git_checkout(root, **git)
    assert forks.describe(root) == expected


def test_git_file_pointing_elsewhere_is_followed(tmp_path):
    from lib_asag.hosts import forks
    root = forge_tree(tmp_path / "webui", "backend/nn/cosmos_predict2.py")
    git_checkout(tmp_path / "store", "ref: refs/heads/main\n", {"main": COMMIT})
    (root / ".git").write_text(f"gitdir: {tmp_path / 'store' / '.git'}\n")
    assert forks.describe(root) == "ersatzForge fca12a28"


def test_unknown_fork_is_named_not_guessed(tmp_path):
    from lib_asag.hosts import forks
    root = forge_tree(tmp_path, "backend/nn/some_new_model.py")
    assert forks.describe(root).startswith("an unrecognised Forge fork")


def test_unknown_transformer_names_the_model_and_the_host(fork, monkeypatch):
    forge = fork("ersatzforge")

    class ERNIEImageModel(torch.nn.Module):  # ersatzForge backend/nn/ernie.py: not supported
        def __init__(self):
            super().__init__()
            self.double_blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

        def forward(self, x, t, context=None, **kwargs):
            return x

    base = importlib.import_module("backend.diffusion_engine.base")
    sd_model = base.tiny_sd_model("ernie", diffusion_model=ERNIEImageModel())
    sampler = importlib.import_module("modules.sd_samplers_cfg_denoiser").Sampler(sd_model)
    p = importlib.import_module("modules.processing").StableDiffusionProcessing(sd_model, sampler)
    messages = forge.Adapter("forge_backend").setup(p, ASAGParams(enabled=True))
    assert len(messages) == 1 and "ERNIEImageModel" in messages[0] and "without ASAG" in messages[0], messages
    assert "(host: ersatzForge (commit unknown: no .git)). Generating without ASAG." in messages[0], messages
    assert "Anima" in messages[0]  # what it does know
    assert p.sd_model.forge_objects.unet is p.sd_model.forge_objects_original.unet


@pytest.mark.parametrize("host, expected", [("ersatzforge", "ASAG: host ersatzForge (commit unknown: no .git)"),
                                            ("neo", "ASAG: host Forge Neo (commit unknown: no .git)"),
                                            ("forge_backend", "ASAG: host Forge (commit unknown: no .git)")])
def test_startup_line_names_the_fork(standins, host, expected):
    standins("forge_backend")
    standins(host)
    importlib.import_module("backend")  # the fork's folder first, then the forge_backend one it falls back to
    from lib_asag import hosts
    assert hosts.detect_host() == "forge_backend"
    assert hosts.startup_line() == expected


def test_block_cache_on_a_unet_keeps_the_perturbed_pass_uncached(fork, monkeypatch):
    """The same cache patches IntegratedUNet2DConditionModel.forward for SD1.x / SDXL: ASAG's call runs the
    original forward (the cache's function sees the host's calls only), in a separate call."""
    forge = fork("ersatzforge")
    batch_mode(monkeypatch, "batched")
    unet_module = importlib.import_module("backend.nn.unet")
    cls = unet_module.IntegratedUNet2DConditionModel
    original, seen = cls.forward, []

    class BlockCache:  # real: extensions-builtin/ersatz_1stblocktea/scripts/blockcache.py
        original_forward_unet = original
        active = True

    namespace = {"BlockCache": BlockCache, "original": original, "seen": seen, "__name__": "blockcache"}
    exec("def patched_forward_unet_fbc(self, *args, **kwargs):\n"
         "    seen.append(len(args[0]))\n"
         "    return original(self, *args, **kwargs)\n", namespace)
    monkeypatch.setattr(cls, "forward", namespace["patched_forward_unet_fbc"])
    base = importlib.import_module("backend.diffusion_engine.base")
    sd_model = base.tiny_sd_model("sd1")
    sampler = importlib.import_module("modules.sd_samplers_cfg_denoiser").Sampler(sd_model)
    p = importlib.import_module("modules.processing").StableDiffusionProcessing(sd_model, sampler)
    assert forge.Adapter("forge_backend").setup(p, ASAGParams(enabled=True)) == []
    run_step(p)
    assert seen == [2 * B]  # the host's cond + uncond call; ASAG's call ran the original forward
    assert [c["cond_or_uncond"] for c in p.sd_model.forge_objects.unet.model.calls] == [[0, 1], [0]]
    assert cls.forward is namespace["patched_forward_unet_fbc"]


def test_neo_row_indices_cover_the_appended_rows(fork, monkeypatch):
    """Forge Neo's calc_cond_uncond_batch puts per-row `cond_mark` / `cond_indices` into transformer_options:
    in the batched call the appended perturbed rows are cond rows there too."""
    forge = fork("neo")
    batch_mode(monkeypatch, "batched")
    p = processing("neo", "lumina2")
    assert forge.Adapter("forge_backend").setup(p, ASAGParams(enabled=True, layers="layer.0")) == []
    model = p.sd_model.forge_objects.unet.model
    apply_model, seen = model.apply_model, []
    monkeypatch.setattr(model, "apply_model", lambda x, t, **c: seen.append(c["transformer_options"])
                        or apply_model(x, t, **c))
    run_step(p)
    options = seen[0]
    assert options["cond_or_uncond"] == [0, 1, 0]
    assert options["cond_indices"] == [0, 1, 4, 5] and options["uncond_indices"] == [2, 3]
    assert options["cond_mark"].tolist() == [0, 0, 1, 1, 0, 0]
