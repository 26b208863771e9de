"""Property-based tests (Hypothesis): random valid parameters behave as a reference computation on the captured
activation; random invalid ones raise a FuncnetError and leave no hook; random damage to a saved intervention is
reported as a FormatError, never as another exception and never as a silently different intervention."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_tally import count_hooks, try_bad_input
from tl_funcnet.errors import FormatError, FuncnetError
from tl_funcnet.hooks import (Intervention, ablate, add, capture, clamp, keep_only, project_onto, project_out, scale,
                              steer)
from tl_testing import make_gpt2_style

SITE = "blocks.0.hook_resid_post"  # (batch, pos, 16)
POST = "blocks.1.mlp.hook_post"  # (batch, pos, 32)
N_POS = 10
PROPS = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    return make_gpt2_style().eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (3, N_POS), generator=torch.Generator().manual_seed(7))


def _edited(model, tokens, iv, site):
    """The activation at ``site`` as produced by ``iv`` (captured right after it), and the clean one."""
    clean, edited = {}, {}
    with capture(site, clean).applied(model), torch.no_grad():
        model(tokens)
    with (iv + capture(site, edited)).applied(model), torch.no_grad():
        model(tokens)
    assert count_hooks([model]) == 0
    return clean[site].double(), edited[site].double()


finite = st.floats(-4, 4, allow_nan=False, allow_infinity=False, width=32)
positions = st.one_of(st.none(), st.integers(-N_POS, N_POS - 1), st.just("last"),
                      st.lists(st.integers(0, N_POS - 1), min_size=1, max_size=4, unique=True),
                      st.builds(lambda a, b: {"slice": [a, b]}, st.integers(0, 4), st.integers(5, N_POS)))


def _pos_mask(pos) -> torch.Tensor:
    m = torch.zeros(N_POS, dtype=torch.bool)
    if pos is None:
        m[:] = True
    elif pos == "last":
        m[-1] = True
    elif isinstance(pos, dict):
        m[slice(*pos["slice"])] = True
    else:
        m[pos if isinstance(pos, list) else [pos]] = True
    return m[None, :, None]


@PROPS
@given(vec=st.lists(finite, min_size=16, max_size=16), factor=finite, pos=positions)
def test_steer_adds_scaled_vector_at_selected_positions(model, tokens, vec, factor, pos):
    v = torch.tensor(vec)
    clean, out = _edited(model, tokens, steer(SITE, v, scale=factor, pos=pos), SITE)
    expected = torch.where(_pos_mask(pos), clean + factor * v.double(), clean)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


units_st = st.lists(st.integers(0, 31), min_size=0, max_size=8, unique=True)


@PROPS
@given(units=units_st, factor=finite, pos=positions)
def test_scale_multiplies_selected_units(model, tokens, units, factor, pos):
    clean, out = _edited(model, tokens, scale(POST, factor, units=units, pos=pos), POST)
    unit_mask = torch.zeros(32, dtype=torch.bool)
    unit_mask[units] = True
    expected = torch.where(_pos_mask(pos) & unit_mask, clean * factor, clean)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@PROPS
@given(units=units_st, value=finite, keep=st.booleans(), pos=positions)
def test_ablate_and_keep_only_replace_exactly_their_units(model, tokens, units, value, keep, pos):
    build = keep_only if keep else ablate
    clean, out = _edited(model, tokens, build(POST, units=units, mode="constant", values=value, pos=pos), POST)
    unit_mask = torch.zeros(32, dtype=torch.bool)
    unit_mask[units] = True
    if keep:
        unit_mask = ~unit_mask
    expected = torch.where(_pos_mask(pos) & unit_mask, torch.full_like(clean, float(np.float32(value))), clean)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@PROPS
@given(lo=finite, width=st.floats(0, 3, width=32), units=units_st)
def test_clamp_keeps_selected_units_in_range(model, tokens, lo, width, units):
    hi = float(np.float32(lo + width))
    clean, out = _edited(model, tokens, clamp(POST, min=lo, max=hi, units=units), POST)
    unit_mask = torch.zeros(32, dtype=torch.bool)
    unit_mask[units] = True
    expected = torch.where(unit_mask, clean.clamp(float(np.float32(lo)), hi), clean)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@PROPS
@given(k=st.integers(1, 4), seed=st.integers(0, 10_000), onto=st.booleans())
def test_projections_match_the_least_squares_projection(model, tokens, k, seed, onto):
    d = torch.randn(k, 16, generator=torch.Generator().manual_seed(seed))
    clean, out = _edited(model, tokens, (project_onto if onto else project_out)(SITE, d), SITE)
    basis = torch.linalg.qr(d.double().T).Q  # (16, k)
    inside = clean @ basis @ basis.T
    torch.testing.assert_close(out, inside if onto else clean - inside, rtol=1e-4, atol=1e-4)


garbage = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not np.isfinite(x)),
    st.text(min_size=1, max_size=5), st.complex_numbers(allow_nan=False, allow_infinity=False).filter(lambda z: z.imag),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=3).map(
        lambda xs: [*xs, float("nan")]),
    st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
)
bad_units = st.one_of(
    st.lists(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not float(x).is_integer()), min_size=1,
             max_size=3),
    st.lists(st.integers(-50, -1), min_size=1, max_size=3), st.integers(), st.text(min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=3), st.lists(st.text(min_size=1, max_size=2), min_size=1, max_size=2),
)
bad_pos = st.one_of(
    st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer() if np.isfinite(x) else True),
    st.text(min_size=1, max_size=5).filter(lambda s: s != "last"), st.booleans(),
    st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda s: s != "slice"), st.integers(), min_size=1,
                    max_size=2),
    st.builds(lambda s: {"slice": s}, st.one_of(st.text(), st.lists(st.text(min_size=1), min_size=1, max_size=3))),
)


@PROPS
@given(value=garbage)
def test_invalid_vectors_are_refused(value):
    out = try_bad_input(f"property: steer vector {value!r:.40}", lambda: steer(SITE, value))
    assert out.clean, out


@PROPS
@given(units=bad_units)
def test_invalid_units_are_refused(units):
    out = try_bad_input(f"property: ablate units {units!r:.40}", lambda: ablate(POST, units=units))
    assert out.clean, out


@PROPS
@given(pos=bad_pos)
def test_invalid_positions_are_refused(pos):
    out = try_bad_input(f"property: steer pos {pos!r:.40}", lambda: steer(SITE, torch.ones(16), pos=pos))
    assert out.clean, out


@PROPS
@given(units=st.lists(st.integers(32, 500), min_size=1, max_size=3), width=st.integers(1, 40).filter(lambda w: w != 16))
def test_out_of_range_units_and_wrong_widths_attach_nothing(model, tokens, units, width):
    for name, iv in (("units", ablate(POST, units=units)), ("width", steer(SITE, torch.ones(width)))):
        def run(iv=iv):
            with iv.applied(model):
                model(tokens)

        out = try_bad_input(f"property: {name} {units if name == 'units' else width}", run, models=[model])
        assert out.clean, out


def _saved(tmp: Path) -> Path:
    iv = steer(SITE, torch.arange(16.0), scale=2.0, pos=[1, 2]) + ablate(POST, units=[3, 4]) + add(POST, 0.5)
    iv.save(tmp / "iv")
    return tmp / "iv"


json_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False),
                        st.text(max_size=4), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                                   st.integers(),
                                                                                                   max_size=2))


@PROPS
@given(hook=st.integers(0, 2), key=st.sampled_from(["site", "op", "params", "scale", "units", "pos", "vector"]),
       value=json_values)
def test_hand_edited_intervention_json_is_reported_or_equivalent(tmp_path_factory, hook, key, value):
    root = _saved(tmp_path_factory.mktemp("iv"))
    original = Intervention.load(root)
    meta = root / "intervention.json"
    data = json.loads(meta.read_text())
    target = data["hooks"][hook] if key in ("site", "op", "params") else data["hooks"][hook]["params"]
    target[key] = value
    meta.write_text(json.dumps(data))
    try:
        back = Intervention.load(root)
    except FormatError:
        return  # reported: the edit made it invalid
    # accepted: then the loaded hook holds exactly what the file now says (no silent change of another value)
    h, before = back.hooks[hook], original.hooks[hook]
    if key in ("site", "op"):
        assert getattr(h, key) == value
    elif key == "params":
        assert value in ({}, None) or dict(h.params) == value
    else:
        got = h.params.get(key)
        if isinstance(got, torch.Tensor):
            assert torch.equal(got, torch.as_tensor(value, dtype=got.dtype))
        else:
            assert got == (tuple(value) if isinstance(value, list) else value)
    others = [k for k in before.params if k != key]
    assert all(str(h.params.get(k)) == str(before.params[k]) for k in others if key not in ("op", "params"))
    shutil.rmtree(root)


@PROPS
@given(offset=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_flipped_bits_in_saved_tensors_are_reported(tmp_path_factory, offset, bit):
    root = _saved(tmp_path_factory.mktemp("iv"))
    blob = root / "tensors.safetensors"
    raw = bytearray(blob.read_bytes())
    raw[offset % len(raw)] ^= 1 << bit
    blob.write_bytes(bytes(raw))
    with pytest.raises(FuncnetError):
        Intervention.load(root)
    shutil.rmtree(root)
