"""Parameters: validation messages, API argument forms, infotext round-trip."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_asag.params import (ARG_ORDER, DEFAULTS, FAMILIES, INFOTEXT_KEYS, ASAGParams, defaults_for, from_infotext,
                             from_script_args, to_infotext)

BAD_VALUES = [
    {"scale": math.nan}, {"scale": math.inf}, {"scale": -1}, {"scale": "strong"}, {"scale": True},
    {"iterations": 2.5}, {"iterations": -1}, {"iterations": 1000}, {"iterations": "many"},
    {"epsilon": 0}, {"epsilon": -0.5}, {"epsilon": math.nan},
    {"start": 0.8, "end": 0.2}, {"start": 1.5}, {"end": -0.1},
    {"adaptive": "exponential"}, {"hires": "twice"}, {"rescale": 2},
    {"layers": "input.7.x"}, {"layers": "center"}, {"enabled": "perhaps"},
]


@pytest.mark.parametrize("values", BAD_VALUES)
def test_every_bad_value_gives_a_message_not_an_exception(values):
    params, messages = from_script_args(values)
    assert params is None
    assert messages and all(isinstance(m, str) and "ASAG" in m for m in messages)


def test_validate_never_raises_on_wrong_types():
    weird = ASAGParams(scale=None, iterations=object(), epsilon="x", layers=5)  # type: ignore[arg-type]
    assert len(weird.validate()) >= 4


def test_defaults_are_valid_per_family():
    for family in FAMILIES:
        assert defaults_for(family).validate() == []
    assert {"sd3", "flux", "chroma"} <= set(FAMILIES)
    with pytest.raises(ValueError, match="hunyuan"):
        defaults_for("hunyuan")


def test_positional_full_and_short_lists():
    full = [True, 2.0, "input.7, middle", 4, 0.5, 0.1, 0.9, "linear", 0.3, "off", "joint"]
    assert len(full) == len(ARG_ORDER)
    params, messages = from_script_args(full)
    assert messages == [] and params == ASAGParams(*full)
    assert from_script_args([True]) == (ASAGParams(enabled=True), [])
    assert from_script_args([True, 5]) == (ASAGParams(enabled=True, scale=5.0), [])
    assert from_script_args([]) == (DEFAULTS, [])


def test_dict_forms_and_string_values():
    params, _ = from_script_args({"enabled": "true", "scale": "1.5", "iterations": "2"})
    assert params == ASAGParams(enabled=True, scale=1.5, iterations=2)
    assert from_script_args([{"enabled": True, "epsilon": 0.2}])[0] == ASAGParams(enabled=True, epsilon=0.2)
    # The API pads a short list with the UI defaults: the leading dict still wins.
    padded = [{"enabled": True, "epsilon": 0.2}, False, 3.0, "", 3, 1.0]
    assert from_script_args(padded) == (ASAGParams(enabled=True, epsilon=0.2), [])


def test_wrong_arg_count_and_unknown_keys():
    params, messages = from_script_args([True] * (len(ARG_ORDER) + 1))
    assert params is None and "at most" in messages[0]
    params, messages = from_script_args({"enabled": True, "scael": 2})
    assert params is None and "scael" in messages[0]


def test_infotext_writes_scale_and_non_defaults_only():
    info = to_infotext(ASAGParams(enabled=True, scale=2.0, iterations=5))
    assert info == {"ASAG scale": 2.0, "ASAG iterations": 5}
    assert set(INFOTEXT_KEYS.values()) >= set(info)
    assert all(k.startswith("ASAG ") for k in INFOTEXT_KEYS.values())


def test_infotext_absent_means_disabled():
    assert from_infotext({"Steps": "20"}) == {"enabled": False}


_floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False).map(lambda x: round(x, 4))  # noqa: E731


@settings(max_examples=60, deadline=None, derandomize=True)
@given(scale=_floats(0, 30), iterations=st.integers(0, 50), epsilon=_floats(0.001, 1000),
       start=_floats(0, 0.49), end=_floats(0.5, 1), adaptive=st.sampled_from(["constant", "linear", "cosine"]),
       rescale=_floats(0, 1), hires=st.sampled_from(["same", "off"]),
       layers=st.sampled_from(["", "middle", "input.7, output.0-2", "middle + output.0", "all"]))
def test_infotext_round_trip_through_text(scale, iterations, epsilon, start, end, adaptive, rescale, hires, layers):
    """Written as the WebUI writes infotext (str of each value) and read back: the same params."""
    params = ASAGParams(True, scale, layers, iterations, epsilon, start, end, adaptive, rescale, hires)
    assert params.validate() == []
    text = {k: str(v) for k, v in to_infotext(params).items()}
    restored, messages = from_script_args(from_infotext(text))
    assert messages == [] and restored == params


# --- messages never contain an infotext key (the README's check reads keys; issue 15.4) ----------------------

@pytest.mark.parametrize("args", [*BAD_VALUES, [True, "x"], [True, 2.0, "x.y"], [True, 2.0, "joint.1.0"],
                                  [True, 2.0, "", "x"], [True, 2.0, "", 3, "x"], [True] * 11, {"scael": 1}])
def test_messages_never_contain_an_infotext_key(args):
    from lib_asag.params import ERROR_KEY, NOTE_KEY
    _, messages = from_script_args(args)
    assert messages
    for key in (*INFOTEXT_KEYS.values(), ERROR_KEY, NOTE_KEY):
        assert not any(key in m for m in messages), (key, messages)


# --- layers of one model: skipped names are noted (issue 15.3) ------------------------------------------------

class _P:
    def __init__(self):
        self.extra_generation_params = {}


def _blocks(**counts):
    from lib_asag.layers import LayerRef
    return [LayerRef(kind, i, 0) for kind, n in counts.items() for i in range(n)]


def test_resolve_and_note_writes_the_note_and_logs(caplog):
    from lib_asag.params import NOTE_KEY, resolve_and_note
    p = _P()
    refs = resolve_and_note(p, ASAGParams(enabled=True, layers="double.6-9"), "flux", _blocks(double=8, single=4))
    assert [str(r) for r in refs] == ["double.6", "double.7"]
    assert p.extra_generation_params == {NOTE_KEY: "double.8-9 not in this model, skipped"}
    assert "double.8-9" in caplog.text and "perturbing double.6-7" in caplog.text


def test_resolve_and_note_says_when_a_default_preset_is_clipped():
    from lib_asag.params import NOTE_KEY, resolve_and_note
    p = _P()
    refs = resolve_and_note(p, ASAGParams(enabled=True), "flux", _blocks(double=8, single=38))
    assert [str(r) for r in refs] == ["double.7"]
    assert p.extra_generation_params[NOTE_KEY] == ("double.8-9 not in this model, skipped "
                                                   "(from the flux default double.7-9)")
    p = _P()
    preset = ASAGParams(enabled=True, layers="double.7-9 + single.7-9")
    resolve_and_note(p, preset, "chroma", _blocks(double=8, single=8))
    assert p.extra_generation_params[NOTE_KEY] == ("double.8-9; single.8-9 not in this model, skipped "
                                                   "(from the chroma preset 'double.7-9 + single.7-9')")


def test_nothing_skipped_writes_nothing(caplog):
    from lib_asag.params import resolve_and_note
    p = _P()
    assert len(resolve_and_note(p, ASAGParams(enabled=True), "sd3", _blocks(joint=24))) == 3
    assert p.extra_generation_params == {} and caplog.text == ""


def test_a_default_preset_that_names_no_block_is_refused_and_says_why():
    """A depth-2 SD3 (the e2e test model) has no joint.7-9: refused, the message lists what exists and says
    the layers came from the family default."""
    from lib_asag.layers import LayerSpecError
    from lib_asag.params import resolve_and_note
    p = _P()
    with pytest.raises(LayerSpecError) as err:
        resolve_and_note(p, ASAGParams(enabled=True), "sd3", _blocks(joint=2))
    message = str(err.value)
    assert "does not exist" in message and "joint.0-1" in message and "the sd3 default joint.7-9" in message
    assert p.extra_generation_params == {}
    with pytest.raises(LayerSpecError) as err:  # a typed spec: no preset wording
        resolve_and_note(p, ASAGParams(enabled=True, layers="joint.5"), "sd3", _blocks(joint=2))
    assert "default" not in str(err.value) and "preset" not in str(err.value)


def test_scope_is_validated_written_when_not_default_and_read_back():
    assert DEFAULTS.scope == "image"
    params, messages = from_script_args([{"enabled": True, "scope": "joint"}])
    assert messages == [] and params.scope == "joint"
    assert to_infotext(params) == {"ASAG scale": 3.0, "ASAG scope": "joint"}
    assert from_infotext({"ASAG scale": "3.0", "ASAG scope": "joint"})["scope"] == "joint"
    assert "ASAG scope" not in to_infotext(ASAGParams(enabled=True))
    params, messages = from_script_args([{"enabled": True, "scope": "text"}])
    assert params is None and messages == ["ASAG's scope must be one of image, joint, got 'text'"]


@pytest.mark.parametrize("family, window", [("sd1", (0.0, 1.0)), ("sdxl", (0.0, 1.0)), ("sd3", (0.01, 0.15)),
                                            ("flux", (0.01, 0.15)), ("anima", (0.01, 0.15))])
def test_start_0_end_1_mean_the_familys_window_any_other_window_is_kept(family, window):
    """The DiT experiment's window (docs/experiment.md) for diffusion transformers, the whole range for UNets;
    what the UI shows before a model is known and what the API fills in (0, 1) resolves to it."""
    resolved = ASAGParams(enabled=True).for_family(family)
    assert (resolved.start, resolved.end) == window == (defaults_for(family).start, defaults_for(family).end)
    own = ASAGParams(enabled=True, start=0.0, end=0.99)
    assert own.for_family(family) == own
    assert ASAGParams(enabled=True, start=0.2).for_family(family).start == 0.2
    assert ASAGParams(enabled=True).for_family("hunyuan") == ASAGParams(enabled=True)
