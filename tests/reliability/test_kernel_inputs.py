"""Bad inputs to the kernel: every builder and op parameter, checked when the Hook is made or when the
intervention is applied; nothing is attached, and nothing runs with a silently wrong value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reliability_tally import try_bad_input
from tl_funcnet.errors import FuncnetError, ShapeError, UnknownOpError, UnknownSiteError
from tl_funcnet.hooks import (Hook, Intervention, ablate, add, capture, clamp, detach, keep_only, patch, patch_subspace,
                              project_onto, project_out, record, register_op, scale, steer)


RESID = "blocks.0.hook_resid_post"
POST = "blocks.1.mlp.hook_post"
Z = "blocks.0.attn.hook_z"


@pytest.fixture(scope="session")
def gpt2(gpt2_tiny):
    return gpt2_tiny


@pytest.fixture(scope="session")
def llama(llama_tiny):
    return llama_tiny


NAN, INF = float("nan"), float("inf")

BAD_VALUES = {
    "nan scalar": NAN, "inf scalar": INF, "-inf scalar": -INF, "complex scalar": 1 + 2j, "bool": True,
    "string": "1.0", "None": None, "nan vector": [0.0] * 15 + [NAN], "inf vector": torch.full((16,), INF),
    "complex tensor": torch.ones(16, dtype=torch.complex64), "bool tensor": torch.ones(16, dtype=torch.bool),
    "empty list": [], "ragged list": [[1.0, 2.0], [3.0]], "object array": np.array([object()] * 3),
    "string array": np.array(["a", "b"]), "dict": {"x": 1.0}, "nan numpy": np.full(16, np.nan),
}

# (builder, its vector parameter) for every builder taking a number or a vector
VECTOR_TAKERS = {
    "steer vector": lambda v: steer(RESID, v), "add value": lambda v: add(RESID, v),
    "scale factor": lambda v: scale(RESID, v), "ablate values": lambda v: ablate(RESID, mode="mean", values=v),
    "clamp min": lambda v: clamp(RESID, min=v), "clamp max": lambda v: clamp(RESID, max=v),
}


@pytest.mark.parametrize("value", list(BAD_VALUES))
@pytest.mark.parametrize("builder", list(VECTOR_TAKERS))
def test_bad_number_or_vector(builder, value):
    if value == "None" and builder in ("clamp min", "clamp max", "ablate values"):
        pytest.skip("None means 'not given' there (covered by the missing-value cases)")
    out = try_bad_input(f"{builder} = {value}", lambda: VECTOR_TAKERS[builder](BAD_VALUES[value]))
    assert out.clean, out


BAD_SCALES = {"inf": INF, "nan": NAN, "string": "2", "None": None, "bool": True, "complex": 2j, "list": [1.0]}


@pytest.mark.parametrize("name", list(BAD_SCALES))
def test_bad_steer_scale(name):
    out = try_bad_input(f"steer scale = {name}", lambda: steer(RESID, torch.ones(16), scale=BAD_SCALES[name]))
    assert out.clean, out


BAD_UNITS = {
    "float 1.5": [1.5], "float 1.0": [1.0], "string": "abc", "bare int": 5, "negative": [-1], "bool items": [True],
    "nested": [[1, 2]], "float tensor": torch.tensor([1.0, 2.0]), "float array": np.array([0.5]),
    "2-D bool mask": torch.ones(2, 16, dtype=torch.bool), "None item": [None], "string items": ["1"],
    "complex": [1j], "dict": {"a": 1}, "numpy float scalar": np.float32(3.0),
}


@pytest.mark.parametrize("name", list(BAD_UNITS))
@pytest.mark.parametrize("builder", ["ablate", "keep_only", "add", "scale", "clamp"])
def test_bad_units(builder, name):
    make = {"ablate": lambda u: ablate(POST, units=u), "keep_only": lambda u: keep_only(POST, units=u),
            "add": lambda u: add(POST, 1.0, units=u), "scale": lambda u: scale(POST, 2.0, units=u),
            "clamp": lambda u: clamp(POST, max=1.0, units=u)}[builder]
    out = try_bad_input(f"{builder} units = {name}", lambda: make(BAD_UNITS[name]))
    assert out.clean, out


BAD_POS = {
    "all": "all", "first": "first", "slice string": {"slice": "x"}, "slice of strings": {"slice": ["a", "b"]},
    "slice step 0": {"slice": [0, 5, 0]}, "slice negative step": {"slice": [5, 0, -1]}, "slice too long":
    {"slice": [0, 1, 1, 1]}, "other key": {"start": 1}, "float": 1.5, "float list": [1.5], "bool": True,
    "float tensor": torch.tensor([1.0]), "2-D tensor": torch.zeros(2, 2, dtype=torch.long), "string list": ["1"],
    "None in list": [None], "complex": 1j,
}


@pytest.mark.parametrize("name", list(BAD_POS))
def test_bad_positions(name):
    out = try_bad_input(f"steer pos = {name}", lambda: steer(RESID, torch.ones(16), pos=BAD_POS[name]))
    assert out.clean, out


BAD_CONSTRUCTIONS = {
    "clamp without bounds": lambda: clamp(RESID),
    "clamp min > max": lambda: clamp(RESID, min=1.0, max=-1.0),
    "clamp min > max per unit": lambda: clamp(RESID, min=torch.ones(16), max=torch.zeros(16)),
    "clamp bounds that do not broadcast": lambda: clamp(RESID, min=torch.zeros(3), max=torch.ones(4)),
    "ablate unknown mode": lambda: ablate(RESID, mode="bogus"),
    "ablate mean without values": lambda: ablate(RESID, mode="mean"),
    "ablate zero with values": lambda: ablate(RESID, mode="zero", values=1.0),
    "project_out zero direction": lambda: project_out(RESID, torch.zeros(16)),
    "project_out repeated directions": lambda: project_out(RESID, torch.ones(2, 16)),
    "project_onto dependent directions": lambda: project_onto(RESID, torch.stack([torch.ones(16), 2 * torch.ones(16),
                                                                                  torch.arange(16.0)])),
    "project_out 3-D directions": lambda: project_out(RESID, torch.randn(2, 2, 16)),
    "project_out nan direction": lambda: project_out(RESID, torch.full((16,), NAN)),
    "patch 1-D activation": lambda: patch(RESID, torch.ones(16)),
    "patch_subspace zero direction": lambda: patch_subspace(RESID, torch.zeros(16), torch.ones(3, 16)),
    "patch_subspace source of another width": lambda: patch_subspace(RESID, torch.ones(16), torch.ones(3, 8)),
    "patch_subspace 1-D source": lambda: patch_subspace(RESID, torch.ones(16), torch.ones(16)),
    "patch_subspace nan source": lambda: patch_subspace(RESID, torch.ones(16), torch.full((3, 16), NAN)),
    "patch nan activation": lambda: patch(RESID, torch.full((10, 16), NAN)),
    "patch where not bool": lambda: patch(RESID, torch.ones(10, 16), where=torch.ones(1, 10, 16)),
    "patch where 2-D": lambda: patch(RESID, torch.ones(10, 16), where=torch.ones(10, 16, dtype=torch.bool)),
    "capture store not a dict": lambda: capture(RESID, []),
    "record sink not callable": lambda: record(RESID, {}),
    "detach no sites": lambda: detach([]),
    "hook unknown op": lambda: Hook(RESID, "ablat", {}),
    "hook unknown parameter": lambda: Hook(RESID, "add", {"vector": 1.0, "scael": 2.0}),
    "hook missing parameter": lambda: Hook(RESID, "add", {}),
    "hook params not a mapping": lambda: Hook(RESID, "add", [("vector", 1.0)]),
    "hook empty site": lambda: Hook("", "detach", {}),
    "hook site not a string": lambda: Hook(5, "detach", {}),  # type: ignore[arg-type]
    "intervention of non-hooks": lambda: Intervention([steer]),  # type: ignore[list-item]
    "intervention of a string": lambda: Intervention("hooks"),  # type: ignore[arg-type]
    "register an op twice": lambda: register_op("add")(lambda **k: None),
    "register an op with a bad name": lambda: register_op("my op")(lambda **k: None),
    "register an op with a bad direction": lambda: register_op("my_op2", direction="up"),
    "capture no sites": lambda: capture([], {}),
    "capture sites not strings": lambda: capture(5, {}),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", list(BAD_CONSTRUCTIONS))
def test_bad_construction(name):
    out = try_bad_input(name, BAD_CONSTRUCTIONS[name], expect=UnknownOpError if "unknown op" in name else None)
    assert out.clean, out


def _apply(model, iv, tokens=None):
    with iv.applied(model):
        model(torch.zeros(2, 10, dtype=torch.long) if tokens is None else tokens)


BAD_APPLICATIONS = {
    "vector of length 7": lambda m: _apply(m, steer(RESID, torch.ones(7))),
    "vector list of length 7": lambda m: _apply(m, steer(RESID, [1.0] * 7)),
    "vector of shape (2, 16)": lambda m: _apply(m, steer(RESID, np.ones((2, 16)))),
    "vector of shape (16, 1)": lambda m: _apply(m, steer(RESID, torch.ones(16, 1))),
    "unit 32 of 32": lambda m: _apply(m, ablate(POST, units=[3, 32])),
    "bool mask of wrong length": lambda m: _apply(m, ablate(POST, units=torch.ones(31, dtype=torch.bool))),
    "head 4 of 4": lambda m: _apply(m, ablate(Z, units=[4])),
    "unknown site": lambda m: _apply(m, steer("blocks.0.hook_resid_pots", torch.ones(16))),
    "layer beyond the model": lambda m: _apply(m, steer("blocks.7.hook_resid_post", torch.ones(16))),
    "per-head vector of wrong width": lambda m: _apply(m, add(Z, torch.ones(5))),
    "directions of wrong width": lambda m: _apply(m, project_out(RESID, torch.randn(12))),
    "patched activation of wrong width": lambda m: _apply(m, patch(RESID, torch.ones(10, 12))),
    "patched activation of other length": lambda m: _apply(m, patch(RESID, torch.ones(7, 16))),
    "patched rows that do not tile the batch": lambda m: _apply(m, patch(RESID, torch.ones(3, 10, 16))),
    "patch where of another shape": lambda m: _apply(m, patch(RESID, torch.ones(10, 16),
                                                              where=torch.ones(3, 10, 16, dtype=torch.bool))),
    "pos 100 beyond the sequence": lambda m: _apply(m, steer(RESID, torch.ones(16), pos=100)),
    "pos -11 before the sequence": lambda m: _apply(m, steer(RESID, torch.ones(16), pos=-11)),
    "pos list with 10": lambda m: _apply(m, scale(RESID, 2.0, pos=[1, 10])),
    "per-row pos of wrong length": lambda m: _apply(m, steer(RESID, torch.ones(16), pos=torch.tensor([1, 2, 3]))),
    "per-row pos out of range": lambda m: _apply(m, steer(RESID, torch.ones(16), pos=torch.tensor([1, 12]))),
    "not a model": lambda m: _apply(object(), steer(RESID, torch.ones(16))),
    "second hook on an unknown site": lambda m: _apply(m, steer(RESID, torch.ones(16)) + detach("blocks.0.nowhere")),
}


@pytest.mark.parametrize("name", list(BAD_APPLICATIONS))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bad_application(arch, name, request):
    model = request.getfixturevalue(arch)
    out = try_bad_input(f"{arch}: {name}", lambda: BAD_APPLICATIONS[name](model), models=[model])
    assert out.clean, out


def test_site_conflict_is_an_error():
    a = steer(RESID, torch.ones(16))
    out = try_bad_input("a | a writing one site", lambda: a | a)
    assert out.clean, out


def test_saving_an_unsaveable_intervention(user_folder):
    iv = steer(RESID, torch.ones(16)) + capture(RESID, {})
    out = try_bad_input("save a capture", lambda: iv.save(user_folder / "iv"), folder=user_folder)
    assert out.clean, out


def test_errors_are_value_errors():
    assert issubclass(ShapeError, FuncnetError) and issubclass(UnknownSiteError, FuncnetError)
    assert issubclass(FuncnetError, ValueError)
