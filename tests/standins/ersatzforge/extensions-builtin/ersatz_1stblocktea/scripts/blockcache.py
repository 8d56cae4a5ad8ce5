"""Stand-in of extensions-builtin/ersatz_1stblocktea/scripts/blockcache.py (ersatzForge fca12a2), "First Block
Cache / TeaCache Integrated", reduced to the First Block Cache of the Cosmos/Anima model, with the real names:
`BlockCache` keeps the original class methods (`original_forward_cosmos`, ...) and its state as class attributes
(`active`, `threshold`, `nocache_steps`, `skip_limit`, `always_last`, `index`, `distance`, `this_step`,
`last_step`, `residual`, `previous`, `previousSigma`, `skipped`); `process` replaces the *class* method
(`MiniTrainDIT.forward = patched_forward_cosmos_fbc`), `process_before_every_sampling` resets the state and
`postprocess` puts the originals back. `patched_forward_cosmos_fbc` counts calls at the same sigma (`index`: one
cache slot per pass of a step), runs the first block, and when the first block's output changed less than
`threshold` since the previous step's call of the same index, adds that call's cached residual instead of
running the remaining blocks. Left out: the gradio UI / infotext, TeaCache, the other families' patches. Not a
package module: tests load it by path, as the WebUI's script loader does."""
from __future__ import annotations

from backend.nn.cosmos_predict2 import MiniTrainDIT


class BlockCache:
    original_forward_cosmos = None

    def __init__(self):
        if BlockCache.original_forward_cosmos is None:
            BlockCache.original_forward_cosmos = MiniTrainDIT.forward

    def process(self, p, enabled, threshold=0.1, nocache_steps=1, max_cached=0, always_last=False):
        if enabled:
            MiniTrainDIT.forward = patched_forward_cosmos_fbc
            BlockCache.active, BlockCache.threshold, BlockCache.nocache_steps = True, threshold, nocache_steps
            BlockCache.skip_limit, BlockCache.always_last = max_cached, always_last

    def process_before_every_sampling(self, p, enabled, *args, **kwargs):
        if enabled and getattr(BlockCache, "active", False):
            BlockCache.index, BlockCache.distance, BlockCache.this_step = 0, [0], 0
            BlockCache.last_step = p.steps
            BlockCache.residual, BlockCache.previous, BlockCache.previousSigma, BlockCache.skipped = \
                [None], [None], None, [0]

    def postprocess(self, p, processed, enabled, *args):
        if enabled and getattr(BlockCache, "active", False):
            MiniTrainDIT.forward = BlockCache.original_forward_cosmos
            BlockCache.active = False


def patched_forward_cosmos_fbc(self, x, timesteps, context, negpip=None, fps=None, padding_mask=None, **kwargs):
    transformer_options = kwargs.get("transformer_options", {})
    b, c, h, w = x.shape
    p = self.patch_spatial
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, 1, h // p, w // p, -1)
    x_B_T_H_W_D = self.x_embedder(patches)
    rope_emb = self.pos_embedder(x_B_T_H_W_D).unsqueeze(1).unsqueeze(0)
    emb_B_T_D = self.t_embedder(timesteps[:, None, None].to(x.dtype) / 1000)

    this_sigma = timesteps[0].item()
    if BlockCache.previousSigma == this_sigma:
        BlockCache.index += 1
        if BlockCache.index == len(BlockCache.distance):
            BlockCache.distance.append(0)
            BlockCache.residual.append(None)
            BlockCache.previous.append(None)
            BlockCache.skipped.append(0)
    else:
        BlockCache.previousSigma = this_sigma
        BlockCache.index = 0
        BlockCache.this_step += 1
    index = BlockCache.index

    def finish(tokens):
        out = self.final_layer(tokens).reshape(b, h // p, w // p, c, p, p)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    original_x = x_B_T_H_W_D.clone()
    for i, block in enumerate(self.blocks):
        x_B_T_H_W_D = block(x_B_T_H_W_D, emb_B_T_D, context, negpip, rope_emb, None, None,
                            transformer_options=transformer_options)
        if i != 0:
            continue
        skip_check = BlockCache.this_step > BlockCache.nocache_steps
        if BlockCache.always_last and BlockCache.this_step >= BlockCache.last_step:
            skip_check = False
        previous = BlockCache.previous[index]
        if previous is None or previous.shape != x_B_T_H_W_D.shape or BlockCache.residual[index] is None:
            skip_check = False
        if BlockCache.skip_limit > 0 and BlockCache.skipped[index] >= BlockCache.skip_limit:
            skip_check = False
        if skip_check:
            BlockCache.distance[index] += float((x_B_T_H_W_D - previous).abs().mean() / previous.abs().mean())
            BlockCache.previous[index] = x_B_T_H_W_D.clone()
            if BlockCache.distance[index] < BlockCache.threshold:
                BlockCache.skipped[index] += 1
                return finish(x_B_T_H_W_D + BlockCache.residual[index])
        else:
            BlockCache.previous[index] = x_B_T_H_W_D.clone()
    BlockCache.residual[index] = x_B_T_H_W_D - original_x
    BlockCache.distance[index] = 0
    BlockCache.skipped[index] = 0
    return finish(x_B_T_H_W_D)
