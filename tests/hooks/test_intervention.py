"""The Intervention type: algebra, attachment, exception safety, serialization."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.errors import (FormatError, FuncnetError, NotSerializableError, OverwriteError, ShapeError,
                               SiteConflictError, UnknownOpError, UnknownSiteError)
from tl_funcnet.hooks import Hook, Intervention, ablate, add, capture, clamp, custom, patch, scale, steer

SITE = "blocks.0.hook_resid_post"


def run(model, tokens, iv):
    with iv.applied(model):
        return model(tokens)


def test_intervention_chain_order_matters_on_shared_site(gpt2_tiny, tokens):
    site = "blocks.0.mlp.hook_post"  # not followed by a norm, which would hide a constant shift
    a = add(site, 1.0)
    b = scale(site, 2.0)
    ab, ba = run(gpt2_tiny, tokens, a + b), run(gpt2_tiny, tokens, b + a)
    assert not torch.allclose(ab, ba, atol=1e-4)
    # (x + 1) * 2 is what the chained hooks must compute, as the oracle of a single custom hook shows
    oracle = run(gpt2_tiny, tokens, custom(site, lambda x, hook: (x + 1.0) * 2.0))
    torch.testing.assert_close(ab, oracle)


def test_intervention_union_is_order_free(gpt2_tiny, tokens):
    a = steer(SITE, torch.randn(16))
    b = ablate("blocks.1.mlp.hook_post", units=[1, 2, 3])
    torch.testing.assert_close(run(gpt2_tiny, tokens, a | b), run(gpt2_tiny, tokens, b | a))
    assert (a | b).sites == (b | a).sites == {SITE, "blocks.1.mlp.hook_post"}


def test_intervention_union_refuses_shared_written_site():
    a = steer(SITE, torch.ones(16))
    with pytest.raises(SiteConflictError, match=r"blocks\.0\.hook_resid_post.*a \+ b"):
        a | a
    with pytest.raises(SiteConflictError):
        a | capture(SITE, {})  # the capture would see a different value depending on order


def test_intervention_union_allows_two_captures_of_one_site():
    s1, s2 = {}, {}
    both = capture(SITE, s1) | capture(SITE, s2)
    assert len(both) == 2


def test_intervention_empty_is_identity(gpt2_tiny, tokens):
    a = steer(SITE, torch.randn(16), scale=3.0)
    e = Intervention()
    base = run(gpt2_tiny, tokens, a)
    for iv in (a + e, e + a, a | e, e | a):
        torch.testing.assert_close(run(gpt2_tiny, tokens, iv), base)
    torch.testing.assert_close(run(gpt2_tiny, tokens, e), gpt2_tiny(tokens))
    assert not e and len(e) == 0


def test_hook_params_are_read_only():
    h = steer(SITE, torch.ones(16), scale=2.0).hooks[0]
    with pytest.raises(TypeError):
        h.params["scale"] = 5.0  # type: ignore[index]
    with pytest.raises(TypeError):
        del h.params["scale"]  # type: ignore[attr-defined]
    assert h.params["scale"] == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.site = "blocks.1.hook_resid_post"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.params = {}  # type: ignore[misc]
    assert h.site == SITE


def test_hook_params_copy_what_the_caller_passes(gpt2_tiny, tokens):
    vec = torch.ones(16)
    units = [1, 2]
    values = {"slice": [2, None, None]}
    iv = steer(SITE, vec, scale=1.0) + ablate("blocks.0.mlp.hook_post", units=units) + scale(SITE, 3.0, pos=values)
    before = run(gpt2_tiny, tokens, iv)
    vec.mul_(100.0)  # the caller reuses their tensor, list and dict
    units.append(3)
    values["slice"][0] = 0
    p0, p1, p2 = (h.params for h in iv.hooks)
    assert torch.equal(p0["vector"], torch.ones(16)) and p0["vector"].data_ptr() != vec.data_ptr()
    assert p1["units"] == (1, 2) and p2["pos"] == {"slice": (2, None, None)}
    torch.testing.assert_close(run(gpt2_tiny, tokens, iv), before, rtol=0, atol=0)


def test_hook_params_detach_a_tensor_that_requires_grad():
    vec = torch.ones(16, requires_grad=True)
    held = steer(SITE, vec).hooks[0].params["vector"]
    assert not held.requires_grad and held.grad_fn is None


def test_intervention_attributes_cannot_be_set_or_deleted():
    a = steer(SITE, torch.ones(16))
    for name in ("_hooks", "hooks", "anything_new"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(a, name, ())
    with pytest.raises(AttributeError, match="immutable"):
        del a._hooks
    assert len(a) == 1 and isinstance(a.hooks, tuple)


def test_applied_matches_run_with_hooks(tiny_model, tokens):
    iv = steer(SITE, torch.randn(16), scale=2.0) + ablate("blocks.1.mlp.hook_post", units=[0, 5])
    via_ctx = run(tiny_model, tokens, iv)
    via_tl = tiny_model.run_with_hooks(tokens, fwd_hooks=iv.fwd_hooks())
    torch.testing.assert_close(via_ctx, via_tl)
    assert not torch.allclose(via_ctx, tiny_model(tokens))


def test_applied_removes_hooks_when_forward_raises(gpt2_tiny, tokens):
    def boom(x, hook):
        raise RuntimeError("inner failure")

    iv = steer(SITE, torch.ones(16)) + custom("blocks.1.hook_resid_post", boom)
    with pytest.raises(RuntimeError, match="inner failure"):
        run(gpt2_tiny, tokens, iv)
    assert count_hooks(gpt2_tiny) == 0


def test_applied_nested_keeps_outer_hooks(gpt2_tiny, tokens):
    outer = steer(SITE, torch.ones(16))
    inner = scale("blocks.1.hook_resid_post", 0.5)
    with outer.applied(gpt2_tiny):
        only_outer = gpt2_tiny(tokens)
        with pytest.raises(ValueError):
            with inner.applied(gpt2_tiny):
                assert count_hooks(gpt2_tiny) == 2
                raise ValueError("leave the inner block by an exception")
        assert count_hooks(gpt2_tiny) == 1
        torch.testing.assert_close(gpt2_tiny(tokens), only_outer)
    assert count_hooks(gpt2_tiny) == 0


def test_applied_keeps_users_own_hooks(gpt2_tiny, tokens):
    seen = []
    gpt2_tiny.add_hook(SITE, lambda x, hook: seen.append(1))
    try:
        with steer(SITE, torch.ones(16)).applied(gpt2_tiny):
            gpt2_tiny(tokens)
        assert count_hooks(gpt2_tiny) == 1  # the user's hook is still there
        gpt2_tiny(tokens)
        assert len(seen) == 2
    finally:
        gpt2_tiny.reset_hooks()


def test_applied_unknown_site_attaches_nothing(gpt2_tiny):
    iv = steer(SITE, torch.ones(16)) + steer("blocks.0.hook_resid_pots", torch.ones(16))
    with pytest.raises(UnknownSiteError, match=r"hook_resid_pots.*Did you mean.*blocks\.0\.hook_resid_post"):
        with iv.applied(gpt2_tiny):
            pass
    assert count_hooks(gpt2_tiny) == 0


def test_applied_wrong_vector_shape_attaches_nothing(gpt2_tiny):
    iv = ablate("blocks.0.mlp.hook_post", units=[1]) + steer(SITE, torch.ones(7))
    with pytest.raises(ShapeError, match=r"steer|add.*blocks\.0\.hook_resid_post.*\(7,\).*16"):
        with iv.applied(gpt2_tiny):
            pass
    assert count_hooks(gpt2_tiny) == 0


def test_applied_unit_index_out_of_range(gpt2_tiny):
    with pytest.raises(ShapeError, match=r"index 32 is out of range.*32 units"):
        with ablate("blocks.0.mlp.hook_post", units=[3, 32]).applied(gpt2_tiny):
            pass
    assert count_hooks(gpt2_tiny) == 0


def test_applied_rejects_non_model():
    with pytest.raises(FuncnetError, match="hooked model"):
        with steer(SITE, torch.ones(16)).applied(object()):
            pass


def test_hook_unknown_op_suggests():
    with pytest.raises(UnknownOpError, match="ablate"):
        Hook(SITE, "ablat", {})


def test_to_dict_roundtrips_through_json(gpt2_tiny, tokens):
    iv = (steer(SITE, torch.randn(16), scale=2.5, pos="last")
          + ablate("blocks.1.mlp.hook_post", units=[1, 4], mode="mean", values=torch.randn(32))
          + scale("blocks.1.hook_resid_post", 0.7, pos={"slice": [2, None, None]}))
    data = json.loads(json.dumps(iv.to_dict()))
    assert data["version"] == 1 and data["hooks"][0]["params"]["vector"] == {"__tensor__": "hooks.0.vector"}
    back = Intervention.from_dict(data, iv.tensors())
    assert back.allclose(iv)
    torch.testing.assert_close(run(gpt2_tiny, tokens, back), run(gpt2_tiny, tokens, iv))


def test_save_load_reproduces_outputs(llama_tiny, tokens, tmp_path):
    iv = steer(SITE, torch.randn(16)) + patch("blocks.1.hook_mlp_out", torch.randn(10, 16), pos=[3, 4])
    iv.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv")
    assert sorted(p.name for p in (tmp_path / "iv").iterdir()) == ["intervention.json", "tensors.safetensors"]
    assert torch.equal(run(llama_tiny, tokens, back), run(llama_tiny, tokens, iv))


def test_save_custom_refuses_and_writes_nothing(tmp_path):
    iv = steer(SITE, torch.ones(16)) + custom(SITE, lambda x, hook: x)
    with pytest.raises(NotSerializableError, match="register"):
        iv.save(tmp_path / "iv")
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_other_version_and_corrupt_files(tmp_path):
    iv = steer(SITE, torch.ones(16))
    iv.save(tmp_path / "iv")
    meta = tmp_path / "iv" / "intervention.json"
    data = json.loads(meta.read_text())
    data["version"] = 99
    meta.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="version 99"):
        Intervention.load(tmp_path / "iv")
    meta.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        Intervention.load(tmp_path / "iv")
    iv.save(tmp_path / "iv2")
    blob = tmp_path / "iv2" / "tensors.safetensors"
    blob.write_bytes(blob.read_bytes()[:20])
    with pytest.raises(FormatError, match="corrupt"):
        Intervention.load(tmp_path / "iv2")
    with pytest.raises(FormatError, match="missing"):
        Intervention.load(tmp_path / "nothing")


def test_save_overwrite_is_atomic_on_failure(tmp_path, monkeypatch):
    iv = steer(SITE, torch.ones(16))
    iv.save(tmp_path / "iv")
    before = (tmp_path / "iv" / "intervention.json").read_text()
    import safetensors.torch as st

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        scale(SITE, 3.0).save(tmp_path / "iv", overwrite=True)
    assert (tmp_path / "iv" / "intervention.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["iv"]


def test_bwd_hooks_capture_gradients(gpt2_tiny, tokens):
    from tl_funcnet.hooks import capture_grad

    grads: dict = {}
    iv = capture_grad("blocks.1.hook_resid_post", grads)
    assert iv.fwd_hooks() == [] and len(iv.bwd_hooks()) == 1
    with iv.applied(gpt2_tiny):
        gpt2_tiny(tokens, return_type="loss").backward()
    g = grads["blocks.1.hook_resid_post"]
    assert g.shape == (3, 10, 16) and g.abs().sum() > 0
    gpt2_tiny.zero_grad(set_to_none=True)


def test_save_follows_the_saving_rules(tmp_path):
    from tl_testing import check_save_rules

    a, b = steer(SITE, torch.ones(16)), ablate("blocks.0.mlp.hook_post", units=[1])
    check_save_rules(lambda p, o: a.save(p, overwrite=o), lambda p, o: b.save(p, overwrite=o), tmp_path)


def test_save_twice_needs_overwrite(tmp_path):
    iv = steer(SITE, torch.ones(16))
    assert iv.save(tmp_path / "iv") == tmp_path / "iv"
    with pytest.raises(OverwriteError, match="overwrite=True"):
        scale(SITE, 2.0).save(tmp_path / "iv")
    assert Intervention.load(tmp_path / "iv").allclose(iv)
    scale(SITE, 2.0).save(tmp_path / "iv", overwrite=True)
    assert Intervention.load(tmp_path / "iv").allclose(scale(SITE, 2.0))


def test_load_detects_a_flipped_byte(tmp_path):
    iv = steer(SITE, torch.randn(16)) + ablate("blocks.0.mlp.hook_post", units=[1], mode="mean", values=torch.randn(32))
    iv.save(tmp_path / "iv")
    blob = tmp_path / "iv" / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's values: the file still parses
    blob.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"tensors\.safetensors does not match the checksum"):
        Intervention.load(tmp_path / "iv")


def test_load_without_checksum_still_reads(tmp_path):
    """Files written before checksums were added have no tensors_sha256: they load unchecked."""
    iv = steer(SITE, torch.randn(16))
    iv.save(tmp_path / "iv")
    meta = tmp_path / "iv" / "intervention.json"
    data = json.loads(meta.read_text())
    assert len(data.pop("tensors_sha256")) == 64
    meta.write_text(json.dumps(data))
    assert Intervention.load(tmp_path / "iv").allclose(iv)


def test_load_rejects_edited_structure(tmp_path):
    iv = steer(SITE, torch.ones(16))
    iv.save(tmp_path / "iv")
    meta = tmp_path / "iv" / "intervention.json"
    good = json.loads(meta.read_text())
    for edit, match in [(lambda d: d.update(format="tl_funcnet.model"), "is not a tl_funcnet intervention"),
                        (lambda d: d.pop("hooks"), "'hooks' is missing"),
                        (lambda d: d["hooks"][0].update(op="nosuchop"), "unknown op 'nosuchop'"),
                        (lambda d: d["hooks"][0]["params"].update(scale="big"), r"hook 0.*scale should be"),
                        (lambda d: d["hooks"][0]["params"].update(vector={"__tensor__": "nope"}), "'nope' is "
                         "referenced but missing")]:
        data = copy.deepcopy(good)
        edit(data)
        meta.write_text(json.dumps(data))
        with pytest.raises(FuncnetError, match=match):
            Intervention.load(tmp_path / "iv")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormatError, match="is not a folder"):
        Intervention.load(tmp_path / "file")


def test_pickle_and_deepcopy_round_trip(gpt2_tiny, tokens):
    where = torch.zeros(3, 10, 16, dtype=torch.bool)
    where[1, 4] = True
    iv = (steer(SITE, torch.randn(16), scale=2.0, pos="last")
          + ablate("blocks.1.mlp.hook_post", units=[1, 4], mode="mean", values=torch.randn(32))
          + scale("blocks.1.hook_resid_post", 0.7, pos={"slice": [2, None, None]})
          + patch("blocks.1.hook_resid_pre", torch.randn(10, 16), where=where)
          + clamp("blocks.0.mlp.hook_post", min=-0.1, max=torch.full((32,), 0.2), units=torch.arange(32) % 2 == 0))
    expected = run(gpt2_tiny, tokens, iv)
    for back in (pickle.loads(pickle.dumps(iv)), copy.deepcopy(iv), copy.copy(iv)):
        assert isinstance(back, Intervention) and back.allclose(iv)
        assert all(type(h.params).__name__ == "mappingproxy" for h in back.hooks)
        torch.testing.assert_close(run(gpt2_tiny, tokens, back), expected, rtol=0, atol=0)
    deep = copy.deepcopy(iv)
    assert deep.hooks[0].params["vector"].data_ptr() != iv.hooks[0].params["vector"].data_ptr()


def test_pickled_capture_keeps_working(gpt2_tiny, tokens):
    store: dict = {}
    back = pickle.loads(pickle.dumps(capture(SITE, store)))
    with back.applied(gpt2_tiny):
        gpt2_tiny(tokens)
    assert store == {}  # the copy writes into its own copy of the dict, never into the original
    assert back.hooks[0].params["store"][SITE].shape == (3, 10, 16)


_LOAD_IN_FRESH_PROCESS = """
import sys
import torch
from tl_funcnet.hooks import Intervention
assert not any(m.startswith("tl_funcnet.steering") for m in sys.modules), "steering imported too early"
iv = Intervention.load(sys.argv[1])
assert "tl_funcnet.steering.ops" in sys.modules  # found through the tl_funcnet.ops entry point
sys.path.insert(0, sys.argv[3])
from tl_testing import make_gpt2_style
model = make_gpt2_style().eval()
tokens = torch.arange(10).reshape(2, 5)
with iv.applied(model):
    torch.save(model(tokens), sys.argv[2])
print(",".join(h.op for h in iv.hooks))
"""


def test_saved_feature_op_loads_in_a_fresh_process_through_entry_points(tmp_path):
    from importlib.metadata import entry_points

    from tl_testing import make_gpt2_style
    from tl_funcnet.steering import SteeringVector

    assert {ep.value for ep in entry_points(group="tl_funcnet.ops")} >= {"tl_funcnet.steering.ops"}
    sv = SteeringVector(torch.randn(16), SITE)
    iv = sv.to_intervention(scale=3.0, pos="generated", prompt_len=3) + ablate("blocks.1.mlp.hook_post", units=[2])
    assert iv.hooks[0].op == "steer_gen"
    iv.save(tmp_path / "iv")
    model = make_gpt2_style().eval()
    tokens = torch.arange(10).reshape(2, 5)
    with iv.applied(model):
        expected = model(tokens)
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(tmp_path / "iv"), str(tmp_path / "out.pt"),
                          tests_dir], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "steer_gen,ablate"
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)
