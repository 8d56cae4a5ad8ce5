"""What ASAG perturbs, host-free: one module per kind of backbone (imports torch and the core only).

- `unet.py`: the `attn1` self-attention of SD1.x/SD2.x/SDXL UNets (row-aware instance forward, Forge-style
  replace patches).
- `dit.py`: the blocks of diffusion transformers (joint / double / single ...), one mechanism for every family
  and host, driven by the rows of `families.py`.
- `rows.py`: the row-aware split shared by both (host attention on the normal rows, Sinkhorn on the perturbed).
- `proof.py`: the count of Sinkhorn calls per chosen layer/block in one perturbed call.
"""
