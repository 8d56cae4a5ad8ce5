"""Stand-in of sgm/modules/diffusionmodules/openaimodel.py: the same tiny layout as the ldm stand-in,
built from sgm's attention classes and with a label embedding for the SDXL `vector` (y)."""
from __future__ import annotations

from ldm.modules.diffusionmodules import openaimodel as _ldm
from sgm.modules.attention import SpatialTransformer


class UNetModel(_ldm.UNetModel):
    transformer_class = SpatialTransformer
