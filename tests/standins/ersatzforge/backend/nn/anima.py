# Stand-in of backend/nn/anima.py (ersatzForge fca12a2), the whole real file: "this file is for compatibility
# with ForgeCouple"; ersatzForge's Anima model is backend/nn/cosmos_predict2.py MiniTrainDIT.

from .cosmos_predict2 import Attention as SelfCrossAttention  # noqa: F401
