"""Runs ASAG's Forge adapter on a real Forge / reForge checkout, in its own process (one host per process).

Usage: python forge_real_driver.py <checkout> <repo root>. Prints one JSON line with what was checked;
exits non-zero on any failed check. Called by test_forge_real.py.

`ldm_patched` checkouts (Forge 33e381f1, reForge): a small random-weight real `BaseModel` / `UNetModel`
(SD1-like layout, and an SDXL-like one with a 2-block middle) wrapped in the real
`modules_forge.unet_patcher.UnetPatcher`, sampled through the real `ldm_patched.modules.samplers
.sampling_function` (so the real `calc_cond_uncond_batch` / `calc_cond_batch` and post-CFG path).
`backend/` checkouts (Forge dfdcbab6): the real `backend.nn.unet.IntegratedUNet2DConditionModel` in a
`backend.modules.k_model.KModel`, the real `backend.patcher.unet.UnetPatcher`,
`backend.sampling.sampling_function.sampling_function_inner`; and the real Flux, Chroma and SD3.5 (MMDiT-X)
transformers (forge_real_dit.py).

Each checkout runs both modes of the perturbed pass: "separate" cases install a recording
`model_function_wrapper` first (another extension's wrapper: ASAG must fall back to its own call), "batched"
cases record the calls on `apply_model` instead (ASAG appends the cond rows to the host's one call).

The reference is independent of the adapter and of lib_asag.sinkhorn: D_c, D_u and D_asag come from the host's
own batching function on the *shared* patcher, D_asag with the chosen attn1 modules' forward overridden by a
plain float64 Sinkhorn, then D = D_u + w (D_c - D_u) + s (D_c - D_asag).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import types
from types import SimpleNamespace

import torch

SIGMA, B = 2.0, 2


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Forge builds layers with `disable_weight_init` ops (uninitialised memory): give every weight a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif ".attn" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                fan_in = max(1, param[0].numel())
                param.copy_(torch.randn(param.shape, generator=g) / math.sqrt(fan_in))


# ------------------------------------------------------------------------------------------------ hosts

SD1 = dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 2],
           transformer_depth=[1, 1, 0], transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 0, 0],
           context_dim=32, num_heads=2, num_head_channels=-1, use_linear_in_transformer=False, adm_in_channels=None,
           use_spatial_transformer=True, legacy=False, image_size=8, use_checkpoint=False)
SDXL = dict(SD1, use_linear_in_transformer=True, transformer_depth=[0, 2, 0], transformer_depth_middle=2,
            transformer_depth_output=[0, 0, 2, 2, 0, 0])
# Output blocks are built from the deepest level up and pop transformer_depth_output from the end.


def placeholder_torchvision(checkout: str) -> bool:
    """reForge's model_base imports its Cosmos model, which imports torchvision at module level and uses it only
    when a Cosmos model runs. Without a torchvision matching the installed torch, register an empty placeholder
    so the import succeeds; nothing here runs Cosmos. Returns whether the placeholder was needed."""
    if not os.path.isdir(os.path.join(checkout, "ldm_patched", "ldm", "cosmos")):
        return False
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    root = types.ModuleType("torchvision")
    root.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__path__ = []
    root.transforms = transforms
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms})
    return True


class NeutralOpts(SimpleNamespace):
    """WebUI options read at call time: ersatzForge's sampling_function reads prediction_scaling, cfg_rescale,
    ... (neutral values); anything else reads as off."""

    def __init__(self) -> None:
        super().__init__(prediction_scaling=1.0, epsilon_scaling=1.0, cfg_normalization=0.0, cfg_rescale=0.0)

    def __getattr__(self, name):
        return 0


def placeholder_webui_shared(bare_backend: bool = False) -> bool:
    """reForge's ldm_patched imports the WebUI's `modules.shared` (for `opts` read at call time with getattr
    defaults on the path run here) and `modules.shared` imports gradio. Without gradio, register a placeholder
    holding an empty `opts` and a `state`; the rest of `modules` is the checkout's. Returns whether needed.
    `bare_backend`: a tree of a host's backend/ alone (Forge Neo: its backend/sampling/condition.py imports
    `modules.shared`, backend/stream.py `modules.devices`) gets a placeholder `modules` package too."""
    import importlib.util
    if importlib.util.find_spec("modules") is None:
        if not bare_backend:
            return False  # Forge 33e381f1's ldm_patched does not import the WebUI
        modules = sys.modules["modules"] = types.ModuleType("modules")
        modules.__path__ = []
        devices = sys.modules["modules.devices"] = types.ModuleType("modules.devices")
        devices.device = torch.device("cpu")
        modules.devices = devices
    try:
        import modules.shared  # noqa: F401
        return False
    except (Exception, SystemExit):  # a full WebUI's modules.shared parses the command line (Forge cmd_args)
        for name in [n for n in sys.modules if n.startswith("modules.shared") or n == "gradio"]:
            del sys.modules[name]
    shared = types.ModuleType("modules.shared")
    shared.opts = NeutralOpts()
    shared.loaded_hypernetworks = []  # ersatzForge backend/nn/unet.py reads it in every attention block
    shared.state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
    sys.modules["modules.shared"] = shared
    import modules
    modules.shared = shared
    return True


class LdmPatched:
    host = "forge"

    def __init__(self, checkout: str):
        self.torchvision_placeholder = placeholder_torchvision(checkout)
        self.shared_placeholder = placeholder_webui_shared()
        import ldm_patched.modules.args_parser as args_parser
        args_parser.args.always_cpu = True  # model_management asserts CUDA otherwise
        from ldm_patched.modules import conds, model_base, samplers, supported_models_base
        from modules_forge.unet_patcher import UnetPatcher
        self.conds, self.model_base, self.samplers = conds, model_base, samplers
        self.base, self.UnetPatcher = supported_models_base.BASE, UnetPatcher
        self.version = "reForge" if hasattr(samplers, "calc_cond_batch") else "Forge ldm_patched"

    def patcher(self, layout: dict, seed: int, dtype=torch.float32):
        config = self.base(dict(layout))
        config.unet_config.update(num_heads=2, num_head_channels=-1)  # BASE adds 64-channel heads
        model = self.model_base.BaseModel(config, device="cpu")
        init_weights(model.diffusion_model, seed)
        model.to(dtype)
        model.diffusion_model.dtype = dtype  # BaseModel.get_dtype(): apply_model casts inputs to it
        return self.UnetPatcher(model.eval(), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

    def cond(self, tensor, strength=None):
        entry = {"cross_attn": tensor, "model_conds": {"c_crossattn": self.conds.CONDCrossAttn(tensor)}}
        if strength is not None:
            entry["strength"] = strength
        return entry

    def sample(self, unet, x, sigma, uncond, cond, cond_scale):
        return self.samplers.sampling_function(unet.model, x, sigma, uncond, cond, cond_scale, unet.model_options,
                                               seed=0)

    def cond_batch(self, model, cond, uncond, x, sigma, options):
        if hasattr(self.samplers, "calc_cond_batch"):
            return tuple(self.samplers.calc_cond_batch(model, [cond, uncond], x, sigma, options))
        return self.samplers.calc_cond_uncond_batch(model, cond, uncond, x, sigma, options)

    def no_attention_model(self):
        return None


class Backend:
    host = "forge_backend"
    version = "Forge backend"

    def __init__(self, checkout: str):
        sys.path.insert(0, os.path.join(checkout, "packages_3rdparty"))  # as modules_forge/initialization.py does
        sys.path.insert(0, os.path.join(checkout, "packages"))  # ersatzForge vendors its helpers there
        from lib_asag.hosts import forks
        self.fork = forks.fork(checkout)  # "Forge", "ersatzForge", "Forge Neo" (None: unknown, run as Forge)
        # The forks' backend.args parse the command line at import: ersatzForge's flag is --always-cpu, Neo's --cpu.
        if self.fork == "ersatzForge":
            sys.argv[1:] = ["--always-cpu"]
        elif self.fork == "Forge Neo":
            sys.argv[1:] = ["--cpu"]
            sys.path.insert(0, os.path.join(checkout, "modules_forge", "packages"))
        # A full WebUI tree also has `modules/` (the adapter reads modules.shared.state): placeholder if needed.
        self.shared_placeholder = placeholder_webui_shared(bare_backend=self.fork == "Forge Neo")
        shared = sys.modules.get("modules.shared")
        if shared is not None and getattr(shared, "opts", None) is None:  # a full WebUI tree, not started
            shared.opts = NeutralOpts()
        if shared is not None and not hasattr(shared, "loaded_hypernetworks"):
            shared.loaded_hypernetworks = []
        from backend import args as backend_args
        backend_args.args.always_cpu = True  # memory_management asserts CUDA otherwise
        if getattr(backend_args, "dynamic_args", {}).get("ops", "") is None:
            # Neo's KModel reads the operations class that `using_forge_operations` records (backend/operations.py;
            # the UNets here are built with torch's own layers, i.e. what it calls "ForgeOperations")
            backend_args.dynamic_args["ops"] = "ForgeOperations"
        from backend.modules.k_prediction import Prediction
        self.Prediction = Prediction
        from backend.modules.k_model import KModel
        from backend.nn.unet import IntegratedUNet2DConditionModel
        from backend.patcher.unet import UnetPatcher
        from backend.sampling import condition, sampling_function
        self.KModel, self.Unet, self.UnetPatcher = KModel, IntegratedUNet2DConditionModel, UnetPatcher
        self.condition, self.sampling = condition, sampling_function

    def patcher(self, layout: dict, seed: int, diffusion_model=None, dtype=torch.float32):
        keys = ("in_channels", "out_channels", "model_channels", "num_res_blocks", "channel_mult", "transformer_depth",
                "transformer_depth_middle", "transformer_depth_output", "context_dim", "num_heads",
                "use_linear_in_transformer", "adm_in_channels", "use_spatial_transformer")
        if diffusion_model is None:
            diffusion_model = self.Unet(**{k: layout[k] for k in keys})
            init_weights(diffusion_model, seed)
        # backend/loader.py sets these on the model before wrapping it in KModel.
        diffusion_model.to(dtype)
        diffusion_model.storage_dtype = diffusion_model.computation_dtype = dtype
        predictor = self.Prediction(prediction_type="epsilon")
        # Neo's KModel.memory_required reads config.memory_usage_factor (backend/modules/k_model.py)
        model = self.KModel(model=diffusion_model, diffusers_scheduler=None, k_predictor=predictor,
                            config=SimpleNamespace(memory_usage_factor=1.0))
        return self.UnetPatcher(model.eval(), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

    def cond(self, tensor, strength=None):
        entry = {"cross_attn": tensor, "model_conds": {"c_crossattn": self.condition.ConditionCrossAttn(tensor)}}
        if strength is not None:
            entry["strength"] = strength
        return entry

    def sample(self, unet, x, sigma, uncond, cond, cond_scale):
        return self.sampling.sampling_function_inner(unet.model, x, sigma, uncond, cond, cond_scale,
                                                     unet.model_options, seed=0)

    def cond_batch(self, model, cond, uncond, x, sigma, options):
        return self.sampling.calc_cond_uncond_batch(model, cond, uncond, x, sigma, options)

    def no_attention_model(self):
        return self.patcher(SD1, 0, diffusion_model=torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1)))


# ------------------------------------------------------------------------------------------------ checks

def make_recorder(calls: list):
    """model_function_wrapper (a host feature) recording what every model call ran. A plain function: the
    patcher's clone deep-copies model_options, which would copy a callable object and its list."""

    def recorder(apply_model, args):
        options = args["c"]["transformer_options"]
        calls.append({"cond_or_uncond": list(args["cond_or_uncond"]), "batch": int(args["input"].shape[0]),
                           "attn1": sorted(map(list, options.get("patches_replace", {}).get("attn1", {})))})
        return apply_model(args["input"], args["timestep"], **args["c"])

    return recorder


def record_apply_model(model, calls: list) -> None:
    """Record every apply_model call on the model instance (the host calls `model.apply_model(x, t, **c)`)."""
    apply_model = model.apply_model

    def recording(x, t, **c):
        options = c.get("transformer_options", {})
        calls.append({"cond_or_uncond": list(options.get("cond_or_uncond", [])), "batch": int(x.shape[0]),
                      "attn1": sorted(map(list, options.get("patches_replace", {}).get("attn1", {})))})
        return apply_model(x, t, **c)

    model.apply_model = recording


class ModeLines(logging.Handler):
    """The adapter's "perturbed pass ..." log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ASAG: perturbed pass"):
            self.lines.append(record.getMessage())


def check_calls(calls, keys, n_conds, cond_scale, batched):
    normal_rows = [0] * n_conds + ([] if cond_scale == 1.0 else [1])
    if batched:  # one call: the host's rows, then one cond chunk per cond entry with ASAG's patch
        assert len(calls) == 1, calls
        assert sorted(calls[0]["cond_or_uncond"][:len(normal_rows)]) == normal_rows, calls
        assert calls[0]["cond_or_uncond"][len(normal_rows):] == [0] * n_conds, calls
        assert calls[0]["batch"] == B * (len(normal_rows) + n_conds) and calls[0]["attn1"] == keys, calls
        return
    assert calls[0]["attn1"] == [] and sorted(calls[0]["cond_or_uncond"]) == normal_rows
    perturbed = calls[1:]
    assert perturbed and all(c["cond_or_uncond"] == [0] * len(c["cond_or_uncond"]) for c in perturbed), perturbed
    assert sum(c["batch"] for c in perturbed) == B * n_conds
    assert all(c["attn1"] == keys for c in perturbed), (perturbed, keys)


def reference(api, shared, params, refs, x, sigma, uncond, cond, cond_scale):
    from lib_asag import layers
    from sinkhorn_reference import sinkhorn_attention_reference
    modules = layers.find_self_attention(shared.model.diffusion_model)
    options = {k: v for k, v in shared.model_options.items() if k != "model_function_wrapper"}
    with torch.no_grad():
        # One call for both, as the host's normal pass batches them (batch composition changes float32 rounding).
        d_c, d_u = api.cond_batch(shared.model, cond, uncond if cond_scale != 1.0 else None, x, sigma, options)
        patched = [modules[ref] for ref in refs]
        for m in patched:
            def forward(x_, context=None, value=None, mask=None, transformer_options=None, m=m):
                out = sinkhorn_attention_reference(m.to_q(x_), m.to_k(x_), m.to_v(x_), m.heads, params.iterations,
                                               params.epsilon)
                return m.to_out(out.to(x_.dtype))
            m.forward = forward
        try:
            d_asag, _ = api.cond_batch(shared.model, cond, None, x, sigma, options)
        finally:
            for m in patched:
                del m.forward
    guided = d_c if cond_scale == 1.0 else d_u + (d_c - d_u) * cond_scale
    return guided + params.scale * (d_c - d_asag), guided


def check_case(api, adapter_cls, layout, spec, cond_scale, n_conds, seed, batched=False):
    from lib_asag import layers
    from lib_asag.params import ASAGParams
    # Batched cases run in float64: the host's call then has more rows, and in float32 that alone changes the
    # rounding (GEMM blocking, attention chunking) by ~1e-7, which this tiny random net amplifies beyond the
    # tolerance (float64: batched and separate modes agree bit for bit). ASAG's Sinkhorn plan stays float32.
    dtype = torch.float64 if batched else torch.float32
    shared = api.patcher(layout, seed, dtype=dtype)
    calls: list[dict] = []
    if batched:
        record_apply_model(shared.model, calls)
    else:
        shared.model_options["model_function_wrapper"] = make_recorder(calls)
    before = copy.deepcopy({k: v for k, v in shared.model_options.items() if k != "model_function_wrapper"})
    objects = SimpleNamespace(unet=shared)
    sd_model = SimpleNamespace(forge_objects=objects, is_sdxl=layout is SDXL)
    sampler = SimpleNamespace(model_wrap_cfg=SimpleNamespace(step=0, total_steps=10))
    p = SimpleNamespace(sd_model=sd_model, sampler=sampler,
                        extra_generation_params={}, is_hr_pass=False, comment=lambda text: None)
    params = ASAGParams(enabled=True, scale=2.0, layers=spec, iterations=3, epsilon=0.8)
    adapter = adapter_cls(api.host)
    messages = adapter.setup(p, params)
    assert messages == [], messages
    clone = sd_model.forge_objects.unet
    assert clone is not shared and clone.model is shared.model

    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(B, 4, 8, 8, generator=g) * SIGMA).to(dtype)
    sigma = torch.full((B,), SIGMA, dtype=dtype)
    uncond = [api.cond(torch.randn(B, 6, 32, generator=g).to(dtype))]
    weights = ([0.5] * n_conds if batched else [0.7, 0.3][:n_conds]) if n_conds > 1 else [None]
    cond = [api.cond(torch.randn(B, 6, 32, generator=g).to(dtype), w) for w in weights]
    handler = ModeLines()
    logging.getLogger("asag").addHandler(handler)
    logging.getLogger("asag").setLevel(logging.INFO)
    try:
        with torch.no_grad():
            got = api.sample(clone, x, sigma, uncond, cond, cond_scale)
    finally:
        logging.getLogger("asag").removeHandler(handler)
        if batched:
            del shared.model.apply_model
    adapter.teardown(p)
    assert sd_model.forge_objects.unet is shared

    after = {k: v for k, v in shared.model_options.items() if k != "model_function_wrapper"}
    assert after == before, "shared patcher's model_options changed"
    refs = layers.resolve_layers(params.layer_spec("sdxl" if layout is SDXL else "sd1"),
                                 layers.find_self_attention(shared.model.diffusion_model))
    keys = sorted(list(ref.patch_key) for ref in refs)
    check_calls(calls, keys, n_conds, cond_scale, batched)
    expected_line = ("ASAG: perturbed pass batched with cond/uncond" if batched else
                     "ASAG: perturbed pass in a separate call (another extension's model_function_wrapper is installed)")
    assert handler.lines == [expected_line], handler.lines

    expected, plain = reference(api, shared, params, refs, x, sigma, uncond, cond, cond_scale)
    tol = 1.5e-4 * float(expected.abs().max())  # float32 host (and plan) vs float64 reference attention
    term = float((expected - plain).abs().max())
    error = float((got - expected.float()).abs().max())
    assert term > 100 * tol, (term, tol)  # the check can tell ASAG from plain CFG
    assert error <= tol, (error, tol)
    return {"mode": "batched" if batched else "separate", "dtype": str(dtype)[6:], "layout": "sdxl" if layout is SDXL else "sd1",
            "spec": spec, "cfg": cond_scale, "conds": n_conds, "calls": len(calls),
            "keys": [".".join(map(str, k)) for k in keys], "term_max": round(term, 4), "error_max": error}


def check_refusal(api, adapter_cls):
    shared = api.no_attention_model()
    if shared is None:
        return None
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=shared), is_sdxl=False)
    p = SimpleNamespace(sd_model=sd_model, extra_generation_params={}, is_hr_pass=False)
    from lib_asag.params import ASAGParams
    messages = adapter_cls(api.host).setup(p, ASAGParams(enabled=True))
    assert len(messages) == 1 and "self-attention" in messages[0], messages
    assert sd_model.forge_objects.unet is shared and "sampler_post_cfg_function" not in shared.model_options
    return messages[0]


MISSING_DEPENDENCY = 3


def main(checkout: str, repo: str) -> None:
    sys.path[:0] = [checkout, repo, os.path.join(repo, "tests")]
    torch.manual_seed(0)
    is_backend = os.path.isfile(os.path.join(checkout, "backend", "patcher", "base.py"))
    try:
        api = Backend(checkout) if is_backend else LdmPatched(checkout)
    except ModuleNotFoundError as e:  # a dependency of the host, not of ASAG
        print(json.dumps({"missing": e.name}))
        sys.exit(MISSING_DEPENDENCY)
    from lib_asag import hosts
    from lib_asag.hosts.forge import Adapter
    assert hosts.detect_host() == api.host, (hosts.detect_host(), api.host)
    cases = [(SD1, "middle", 5.0, 1), (SD1, "middle, output.2-3", 5.0, 2), (SD1, "input.1", 1.0, 1),
             (SDXL, "middle", 5.0, 1), (SDXL, "input.3.1", 5.0, 1)]
    results = [check_case(api, Adapter, *case, seed=i) for i, case in enumerate(cases)]
    batched = [(SD1, "middle, output.2-3", 5.0, 1), (SD1, "input.1", 1.0, 2), (SDXL, "middle", 5.0, 2)]
    results += [check_case(api, Adapter, *case, seed=i, batched=True) for i, case in enumerate(batched)]
    source = sys.modules["lib_asag.hosts.forge"].cond_batch_function.__code__.co_filename
    host_module = "backend.sampling.sampling_function" if is_backend else "ldm_patched.modules.samplers"
    host_file = sys.modules[host_module].__file__
    assert host_file.startswith(os.path.abspath(checkout)), host_file
    assert source.startswith(os.path.abspath(repo)), source
    dit = None
    if is_backend:
        if api.fork == "ersatzForge":
            dit = "ersatzForge: its own DiT classes are checked by forks_real_dit.py"
        elif api.fork == "Forge Neo":
            dit = "Forge Neo: its own DiT classes are checked by neo_real_dit.py"
        else:
            import forge_real_dit
            dit = forge_real_dit.run(api, Adapter)
    print(json.dumps({"host": api.host, "version": api.version, "host_file": host_file, "cases": results,
                      "placeholders": [n for n in ("torchvision", "shared") if getattr(api, f"{n}_placeholder", False)],
                      "refusal": check_refusal(api, Adapter), "dit": dit}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
