"""Stand-in of backend/nn/flux.py (Forge Neo, stored commit 06d6af9a, "ComfyUI v0.9.0"; the loader builds this
`IntegratedFluxTransformer2DModel` for Flux *and* Flux.2 / Klein checkpoints), reduced to what ASAG depends on,
with the real names and signatures:
- module-level `attention(q, k, v, pe, mask=None, transformer_options={})`: `apply_rope` (if `pe` is not None),
  then this module's global `attention_function(q, k, v, heads, skip_reshape=True, mask=mask,
  transformer_options=transformer_options)` on (B, heads, N, d);
- `QKNorm.forward(q, k, v)`; `DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias=False,
  flipped_img_txt=False, modulation=True, ...)`, `.forward(img, txt, vec, pe, attn_mask=None,
  modulation_dims_img=None, modulation_dims_txt=None, transformer_options={})` (txt first unless
  `flipped_img_txt`); `SingleStreamBlock(hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None, modulation=True,
  ...)`, `.forward(x, vec, pe, attn_mask=None, modulation_dims=None, transformer_options={})`; with
  `modulation=False` (Neo's Chroma builds these very classes, backend/nn/chroma.py) `vec` carries the block's
  modulations instead of the vector they are computed from;
- `forward_orig(img, img_ids, txt, txt_ids, timesteps, y, guidance=None, control=None, transformer_options={},
  attn_mask=None)` sets `transformer_options["block_type"/"block_index"/"total_blocks"]` and honours
  ComfyUI-style `transformer_options["patches_replace"]["dit"][("double_block" | "single_block", i)]`;
  `forward(x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options={},
  **kwargs)`.
Left out: modulation objects, MLP embedders, global modulation (Flux.2), reference latents, ControlNet adds."""
from __future__ import annotations

import torch
from torch import nn

from backend.attention import attention_function


def attention(q, k, v, pe, mask=None, transformer_options={}):
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    heads = q.shape[1]
    return attention_function(q, k, v, heads, skip_reshape=True, mask=mask, transformer_options=transformer_options)


def rope(pos, dim, theta):
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta ** scale)
    out = torch.einsum("...n,d->...nd", pos.to(dtype=torch.float32), omega)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).to(dtype=torch.float32)


def apply_rope1(x, freqs_cis):
    x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    x_out = freqs_cis[..., 0] * x_[..., 0]
    x_out.addcmul_(freqs_cis[..., 1], x_[..., 1])
    return x_out.reshape(*x.shape).type_as(x)


def apply_rope(xq, xk, freqs_cis):
    return apply_rope1(xq, freqs_cis), apply_rope1(xk, freqs_cis)


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids):
        emb = torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])], dim=-3)
        return emb.unsqueeze(1)


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)


def heads_of(qkv, heads):
    """(B, L, 3*H*D) -> q, k, v (B, H, L, D), as the real blocks' view + permute (test helper name)."""
    return qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False, flipped_img_txt=False, modulation=True,
                 **kwargs):
        super().__init__()
        self.num_heads, self.hidden_size, self.flipped_img_txt = num_heads, hidden_size, flipped_img_txt
        self.modulation = modulation
        if modulation:
            self.img_mod = nn.Linear(hidden_size, hidden_size)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = nn.Linear(hidden_size, hidden_size)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_mlp = nn.Linear(hidden_size, hidden_size)

    def forward(self, img, txt, vec, pe, attn_mask=None, modulation_dims_img=None, modulation_dims_txt=None,
                transformer_options={}):
        # modulation=False (Chroma): `vec` holds this block's modulations (real: ((img_mod1, img_mod2), (txt_mod1,
        # txt_mod2)) ModulationOut pairs; here one (B, 1, hidden) shift each for the image and the text stream)
        img_shift, txt_shift = (self.img_mod(vec)[:, None], 0) if self.modulation else vec
        img_q, img_k, img_v = heads_of(self.img_attn.qkv(img + img_shift), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = heads_of(self.txt_attn.qkv(txt + txt_shift), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + self.img_attn.proj(img_attn)
        img = img + self.img_mlp(torch.tanh(img))
        txt = txt + self.txt_attn.proj(txt_attn)
        txt = txt + self.txt_mlp(torch.tanh(txt))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None, modulation=True, **kwargs):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3)
        self.linear2 = nn.Linear(hidden_size, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.modulation = nn.Linear(hidden_size, hidden_size) if modulation else None

    def forward(self, x, vec, pe, attn_mask=None, modulation_dims=None, transformer_options={}):
        shift = self.modulation(vec)[:, None] if self.modulation else vec  # modulation=False: the block's own
        q, k, v = heads_of(self.linear1(x + shift), self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        return x + self.linear2(attn)


def patchify(x):
    """(B, C, H, W) -> (B, H/2 * W/2, 4C) and the image position ids (B, N, 3), as the real process_img."""
    b, c, h, w = x.shape
    img = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return img, ids.reshape(1, -1, 3).expand(b, -1, -1).to(x)


def unpatchify(img, shape):
    b, c, h, w = shape
    return img.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(shape)


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, out_channels=4, vec_in_dim=None, context_in_dim=8, hidden_size=16,
                 mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(2, 2, 4), theta=10000,
                 patch_size=2, qkv_bias=True, guidance_embed=False, txt_ids_dims=(), **kwargs):
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels * patch_size * patch_size
        self.out_channels = out_channels * patch_size * patch_size
        self.hidden_size, self.num_heads, self.axes_dim = hidden_size, num_heads, list(axes_dim)
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size)
        self.time_in = nn.Linear(1, hidden_size)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = nn.Linear(hidden_size, self.out_channels)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, control=None,
                     transformer_options={}, attn_mask=None):
        patches_replace = transformer_options.get("patches_replace", {})
        img = self.img_in(img)
        vec = self.time_in(timesteps[:, None].to(img.dtype))
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        blocks_replace = patches_replace.get("dit", {})
        transformer_options["total_blocks"] = len(self.double_blocks)
        transformer_options["block_type"] = "double"
        for i, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = i
            if ("double_block", i) in blocks_replace:
                def block_wrap(args, block=block):
                    out = {}
                    out["img"], out["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                                   attn_mask=args.get("attn_mask"),
                                                   transformer_options=args.get("transformer_options"))
                    return out
                out = blocks_replace[("double_block", i)]({"img": img, "txt": txt, "vec": vec, "pe": pe,
                                                           "attn_mask": attn_mask,
                                                           "transformer_options": transformer_options},
                                                          {"original_block": block_wrap})
                txt, img = out["txt"], out["img"]
            else:
                img, txt = block(img=img, txt=txt, vec=vec, pe=pe, attn_mask=attn_mask,
                                 transformer_options=transformer_options)
        img = torch.cat((txt, img), 1)
        transformer_options["total_blocks"] = len(self.single_blocks)
        transformer_options["block_type"] = "single"
        for i, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = i
            img = block(img, vec=vec, pe=pe, attn_mask=attn_mask, transformer_options=transformer_options)
        return self.final_layer(img[:, txt.shape[1]:, ...])

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):
        img, img_ids = patchify(x)
        txt_ids = torch.zeros((x.shape[0], context.shape[1], len(self.axes_dim))).to(x)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep / 1000.0, y, guidance, control,
                                transformer_options, attn_mask=kwargs.get("attention_mask", None))
        return unpatchify(out, x.shape)
