"""Stand-in of modules/sd_models.py (A1111 v1.10.1 82a973c0; Forge dfdcbab6 has the same name): `model_data`, an
`SdModelData` whose `sd_model` attribute is the loaded model (None before the first load; Forge: a
FakeInitialModel). The real `shared.sd_model` is a property that loads a checkpoint through
`model_data.get_sd_model()` when none is loaded; in the stand-ins it is a plain attribute, read here."""
from __future__ import annotations

from modules import shared


class SdModelData:
    @property
    def sd_model(self):
        return shared.sd_model


model_data = SdModelData()
