"""Hook parameters are checked when a Hook is made (hooks/values.py, hooks/select.py, each op's prepare), fitted to
a model before anything is attached, and positions are checked against each forward at run time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.errors import FuncnetError, ShapeError, UnknownOpError
from tl_funcnet.hooks import (Hook, ablate, add, clamp, keep_only, patch, project_onto, project_out, scale,
                              steer)
from tl_funcnet.hooks.select import prepare_pos, prepare_units
from tl_funcnet.hooks.values import finite_number, index_list, positive_int, real_tensor, scalar_or_tensor

SITE = "blocks.0.hook_resid_post"
POST = "blocks.0.mlp.hook_post"

BAD = [
    # (label, builder, op named in the message, what the message says)
    ("nan vector", lambda: steer(SITE, torch.tensor([1.0, float("nan")] * 8)), "add", "NaN or infinite"),
    ("inf vector", lambda: steer(SITE, torch.full((16,), float("inf"))), "add", "NaN or infinite"),
    ("nan in numpy", lambda: add(SITE, np.array([np.nan] * 16)), "add", "NaN or infinite"),
    ("complex vector", lambda: steer(SITE, torch.ones(16, dtype=torch.complex64)), "add", "complex"),
    ("complex number", lambda: scale(SITE, 1 + 2j), "scale", "real"),
    ("bool vector", lambda: add(SITE, torch.ones(16, dtype=torch.bool)), "add", "boolean"),
    ("text vector", lambda: add(SITE, ["a", "b"]), "add", "should hold numbers"),
    ("empty vector", lambda: add(SITE, torch.ones(0)), "add", "empty"),
    ("scale inf", lambda: steer(SITE, torch.ones(16), scale=float("inf")), "add", "finite real number, got inf"),
    ("scale nan", lambda: steer(SITE, torch.ones(16), scale=float("nan")), "add", "finite real number, got nan"),
    ("scale bool", lambda: steer(SITE, torch.ones(16), scale=True), "add", "finite real number, got bool"),
    ("factor inf", lambda: scale(SITE, float("-inf")), "scale", "finite"),
    ("units float", lambda: ablate(POST, units=[1.5]), "ablate", "integers only, got float 1.5"),
    ("units 2.0", lambda: ablate(POST, units=[2.0]), "ablate", "never rounded"),
    ("units text", lambda: ablate(POST, units="abc"), "ablate", "list of integer indices, got str"),
    ("units bare int", lambda: ablate(POST, units=5), "ablate", r"write \[5\] for one index"),
    ("units negative", lambda: ablate(POST, units=[-1]), "ablate", "negative index -1"),
    ("units bool list", lambda: ablate(POST, units=[True]), "ablate", "integers only"),
    ("units float tensor", lambda: keep_only(POST, units=torch.tensor([1.0])), "keep_only", "integers"),
    ("units 2-D mask", lambda: ablate(POST, units=torch.ones(2, 16, dtype=torch.bool)), "ablate", "1-D"),
    ("pos slice text", lambda: scale(SITE, 2.0, pos={"slice": "x"}), "scale", "a slice is"),
    ("pos slice float", lambda: scale(SITE, 2.0, pos={"slice": [0.5, 3]}), "scale", "slice bounds"),
    ("pos slice step 0", lambda: scale(SITE, 2.0, pos={"slice": [0, 3, 0]}), "scale", "slice step"),
    ("pos other key", lambda: scale(SITE, 2.0, pos={"start": 1}), "scale", "a slice is"),
    ("pos all", lambda: scale(SITE, 2.0, pos="all"), "scale", r"all positions are pos=None"),
    ("pos first", lambda: scale(SITE, 2.0, pos="first"), "scale", "got 'first'"),
    ("pos float", lambda: scale(SITE, 2.0, pos=1.5), "scale", "integer"),
    ("pos bool", lambda: scale(SITE, 2.0, pos=True), "scale", "got True"),
    ("pos float tensor", lambda: scale(SITE, 2.0, pos=torch.tensor([1.0])), "scale", "1-D integers"),
    ("clamp min > max", lambda: clamp(POST, min=1.0, max=0.0), "clamp", "min <= max"),
    ("clamp per-unit min > max", lambda: clamp(POST, min=torch.zeros(32), max=torch.full((32,), -1.0)), "clamp",
     "min <= max"),
    ("clamp neither", lambda: clamp(POST), "clamp", "min, max or both"),
    ("clamp shapes", lambda: clamp(POST, min=torch.zeros(3), max=torch.ones(4)), "clamp", "broadcast"),
    ("zero direction", lambda: project_out(SITE, torch.zeros(16)), "project_out", "zero vector"),
    ("zero among several", lambda: project_onto(SITE, torch.stack([torch.ones(16), torch.zeros(16)])),
     "project_onto", "direction 1 is the zero vector"),
    ("repeated directions", lambda: project_out(SITE, torch.ones(2, 16)), "project_out", "span only 1"),
    ("dependent directions", lambda: project_onto(SITE, torch.stack([torch.arange(16.0), 3 * torch.arange(16.0)])),
     "project_onto", "linearly independent"),
    ("3-D directions", lambda: project_out(SITE, torch.ones(2, 2, 16)), "project_out", "one vector"),
    ("ablate mode", lambda: ablate(POST, units=[1], mode="median"), "ablate", "mode should be one of"),
    ("mean without values", lambda: ablate(POST, units=[1], mode="mean"), "ablate", "needs values"),
    ("zero with values", lambda: ablate(POST, units=[1], values=torch.zeros(32)), "ablate", "takes no values"),
    ("unknown param", lambda: Hook(SITE, "add", {"vector": 1.0, "scael": 2.0}), "add",
     r"unknown parameter\(s\) \['scael'\]"),
    ("missing param", lambda: Hook(SITE, "add", {}), "add", r"needs the parameter\(s\) \['vector'\]"),
    ("params not a mapping", lambda: Hook(SITE, "add", [("vector", 1.0)]), "add", "mapping"),
    ("1-D patch", lambda: patch(SITE, torch.ones(16)), "replace", r"\(pos, \*units\)"),
]


@pytest.mark.parametrize("label, build, op, match", BAD, ids=[b[0] for b in BAD])
def test_bad_params_are_refused_when_the_hook_is_made(label, build, op, match):
    with pytest.raises(FuncnetError, match=match) as info:
        build()
    msg = str(info.value)
    assert msg.startswith(f"{op}() at '"), msg  # names the op and the site
    assert "blocks.0." in msg


def test_hook_site_and_op_are_checked():
    with pytest.raises(FuncnetError, match="non-empty TransformerLens hook name"):
        Hook("", "add", {"vector": 1.0})
    with pytest.raises(FuncnetError, match="non-empty"):
        Hook(None, "add", {"vector": 1.0})  # type: ignore[arg-type]
    with pytest.raises(UnknownOpError, match=r"unknown op 'ad'.*Did you mean.*'add'"):
        Hook(SITE, "ad", {"vector": 1.0})


def test_good_params_are_normalized():
    h = ablate(POST, units=np.array([3, 1]), pos=[0, -1]).hooks[0]
    assert h.params["units"] == (3, 1) and h.params["pos"] == (0, -1)
    h = ablate(POST, units=torch.tensor([2, 4])).hooks[0]
    assert h.params["units"] == (2, 4)
    h = scale(SITE, torch.tensor(2.0), pos={"slice": [1]}).hooks[0]
    assert h.params["factor"] == 2.0 and isinstance(h.params["factor"], float)
    assert h.params["pos"] == {"slice": (1, None, None)}
    h = add(SITE, [1, 2] * 8).hooks[0]  # a list of ints becomes a float tensor
    assert h.params["vector"].dtype == torch.float32 and h.params["vector"].shape == (16,)
    h = add(SITE, torch.ones(16, dtype=torch.float64)).hooks[0]
    assert h.params["vector"].dtype == torch.float64  # floating tensors keep their dtype
    h = scale(SITE, 2.0, pos=np.int64(3)).hooks[0]
    assert h.params["pos"] == 3 and type(h.params["pos"]) is int


def test_value_helpers():
    assert finite_number(np.float32(1.5), "x") == 1.5
    assert scalar_or_tensor(torch.tensor([[2.0]]).squeeze(), "x") == 2.0
    assert index_list(range(3), "u") == (0, 1, 2)
    assert index_list([-1], "pos", allow_negative=True) == (-1,)
    assert positive_int(np.int64(2), "n") == 2
    for bad in (0, 1.0, True, "2"):
        with pytest.raises(FuncnetError, match="integer >= 1"):
            positive_int(bad, "n")
    with pytest.raises(FuncnetError, match="tensor, array or list"):
        real_tensor([[1.0], [1.0, 2.0]], "x")  # ragged
    assert prepare_units(None) is None and prepare_pos(None) is None
    assert prepare_pos("last") == "last"


def test_validate_against_the_model_attaches_nothing(gpt2_tiny):
    for iv, match in [(add(POST, torch.ones(16)), r"add\(\) at 'blocks.0.mlp.hook_post'.*\(16,\).*\(32,\)"),
                      (ablate(POST, units=[32]), "index 32 is out of range"),
                      (ablate(POST, units=torch.zeros(16, dtype=torch.bool)), "16 entries"),
                      (project_out(POST, torch.ones(16)), "width 16"),
                      (clamp(POST, max=torch.ones(7)), r"\(7,\)"),
                      (steer(SITE, torch.ones(16)) + ablate("blocks.1.attn.hook_z", units=[4]),
                       "index 4 is out of range.*4 units")]:
        with pytest.raises(ShapeError, match=match):
            with iv.applied(gpt2_tiny):
                pass
        assert count_hooks(gpt2_tiny) == 0


@pytest.mark.parametrize("pos", [100, -11, [0, 10], torch.tensor([0, 1, 10])])
def test_position_out_of_range_raises_at_run_time_and_leaves_no_hooks(gpt2_tiny, tokens, pos):
    iv = steer("blocks.0.hook_resid_pre", torch.ones(16)) + scale(SITE, 2.0, pos=pos)
    with pytest.raises(ShapeError, match=r"pos.* at 'blocks\.0\.hook_resid_post'"):
        with iv.applied(gpt2_tiny):
            gpt2_tiny(tokens)
    assert count_hooks(gpt2_tiny) == 0
    with scale(SITE, 2.0, pos=-10).applied(gpt2_tiny):
        gpt2_tiny(tokens)  # the first position, counted from the end, is in range


def test_pos_tensor_needs_one_position_per_row(gpt2_tiny, tokens):
    with pytest.raises(ShapeError, match="one position per row"):
        with scale(SITE, 2.0, pos=torch.tensor([0, 1])).applied(gpt2_tiny):
            gpt2_tiny(tokens)
    assert count_hooks(gpt2_tiny) == 0
