"""Stand-in of modules/devices.py: test_for_nans is a no-op here; cond_cast_* are identities."""
from __future__ import annotations


def test_for_nans(x, where):
    return None


def cond_cast_unet(x):
    return x


def cond_cast_float(x):
    return x
