"""Stand-in package (tests only): Forge Neo's model files here; backend/nn/unet.py comes from the
`forge_backend` stand-in."""
import os as _os

__path__.append(_os.path.join(_os.path.dirname(__file__), _os.pardir, _os.pardir, _os.pardir, "forge_backend",
                              "backend", "nn"))
