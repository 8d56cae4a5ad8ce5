"""img2img and inpainting with ASAG over /sdapi: the image changes; with a mask only the repainted area does."""
from __future__ import annotations

ON = [True, 3.0, "all"]  # every attn1 layer: an effect well above PNG rounding at 64 px (conftest.ON)


def test_img2img(webui, plain):
    base = plain("img2img")
    got = webui.img2img(ON)
    assert got.status == 200, got.body
    assert got.pixels() != base.pixels()
    assert got.params()["ASAG scale"] == "3.0" and "ASAG error" not in got.params()
    assert webui.img2img([False]).images == base.images


def test_inpaint_changes_only_the_masked_area(webui, api, plain):
    """Mask = right half. Both images keep the original left half (inpaint_full_res off, no mask blur), so
    ASAG's change must be confined to the right half."""
    kw = dict(mask=api.image_b64(mask=True), mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
              inpainting_mask_invert=0, denoising_strength=0.9)
    base = plain("img2img", **kw)
    got = webui.img2img(ON, **kw)
    assert got.status == 200, got.body
    assert got.params()["ASAG scale"] == "3.0"
    a, b = base.pixels(), got.pixels()
    size = 64
    left = [i for i in range(0, len(a), 3) if (i // 3) % size < size // 2 - 8]   # away from the VAE's reach
    right = [i for i in range(0, len(a), 3) if (i // 3) % size >= size // 2]
    left_diff = max(abs(a[i] - b[i]) for i in left)
    right_diff = max(abs(a[i] - b[i]) for i in right)
    assert right_diff > 0
    assert left_diff <= 2, left_diff  # the host pastes the original back outside the mask
