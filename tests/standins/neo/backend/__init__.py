"""Stand-in package (tests only). Forge Neo keeps Forge's patcher and k_model in what ASAG uses
(docs/hosts-forks.md), so every module not in this folder is the `forge_backend` stand-in's: its folder is
appended to this package's search path."""
import os as _os

__path__.append(_os.path.join(_os.path.dirname(__file__), _os.pardir, _os.pardir, "forge_backend", "backend"))
