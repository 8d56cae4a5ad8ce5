"""Stand-in package (tests only): ersatzForge's model files here; backend/nn/unet.py (unchanged in what ASAG
uses) comes from the `forge_backend` stand-in."""
import os as _os

__path__.append(_os.path.join(_os.path.dirname(__file__), _os.pardir, _os.pardir, _os.pardir, "forge_backend",
                              "backend", "nn"))
