// Hover hints for the ASAG accordion (txt2img and img2img). Element ids come from Script.elem_id:
// "script_<tab>_asag_<field>". A1111 and Forge load every file in an extension's javascript/ folder.
(function () {
    const hints = {
        "enabled": "Adversarial Sinkhorn Attention Guidance: one extra model pass per step with degraded self-attention, guided away from.",
        "scale": "ASAG scale s in  uncond + cfg·(cond − uncond) + s·(cond − perturbed). 0 = no effect; try 1–5.",
        "rescale": "Blend towards a copy rescaled to the conditional prediction's std (0 = off). Counters over-saturation at high scales.",
        "preset": "Fills the Layers box with a preset for the loaded model family: UNets (SD1.x/SD2.x, SDXL) or diffusion transformers (SD3: joint.7-9; Flux/Chroma: double.7-9).",
        "layers": "Self-attention layers to perturb. UNet: 'middle', 'input.7', 'output.0-2', 'input.7.1'. Diffusion transformers (joint attention of whole blocks): 'joint.7-9' (SD3), 'double.0-18', 'single.3' (Flux/Chroma). Or 'all'; comma or semicolon separated. Empty = the model's default preset.",
        "iterations": "Sinkhorn iterations T: alternating row/column normalisations of the adversarial plan, then a final row step. 0 = anti-attention softmax(−S/ε).",
        "epsilon": "Temperature ε of the kernel exp(−QKᵀ/(√d·ε)). Larger ε → closer to uniform (maximum-entropy) attention.",
        "start": "Fraction of the sampling steps after which ASAG starts. Start 0 with End 1 = the model's default window: all steps for UNets, 0.01–0.15 for diffusion transformers (shown when ASAG is ticked or 🔄).",
        "end": "Fraction of the sampling steps at which ASAG stops (exclusive). For every step of a diffusion transformer use e.g. 0–0.99 (0–1 means its default 0.01–0.15).",
        "adaptive": "How the scale changes over the active range: constant, or decaying to 0 linearly or along a cosine.",
        "hires": "Hires fix second pass: 'same' runs ASAG with the same settings, 'off' skips it there.",
        "scope": "Diffusion transformers only: 'image' perturbs the image×image part of a chosen block's joint attention (text rows and image-to-text weights stay the model's); 'joint' perturbs all of it, text rows included (a stronger push). No effect on UNets.",
    };

    // Idempotent (runs on every UI update, so re-rendered children get their hint back). The enabled
    // hint goes on the accordion's header only: the accordion element contains every other control.
    function setHint(root, text) {
        if (root.title !== text) root.title = text;
        root.querySelectorAll("label, span, input, textarea, select").forEach((el) => {
            if (el.title !== text) el.title = text;
        });
    }

    function applyHints() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [field, text] of Object.entries(hints)) {
                const root = gradioApp().getElementById(`script_${tab}_asag_${field}`);
                const el = root && field === "enabled" ? root.querySelector(".label-wrap") : root;
                if (el) setHint(el, text);
            }
        }
    }

    onUiLoaded(applyHints);
    onUiUpdate(applyHints);
})();
