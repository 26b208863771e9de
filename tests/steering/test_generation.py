"""Steering positions during generation: every position, the core "last", and the generation-aware modes
"prompt", "generated" and "from_last", with and without the KV cache."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError
from tl_funcnet.hooks import capture, steer
from tl_funcnet.steering import GEN_MODES, SteeringVector, generate

N_NEW = 6
SITE = "blocks.0.hook_resid_post"


def _case(seed: int):
    toks = torch.randint(0, 50, (1, 4), generator=torch.Generator().manual_seed(seed))
    vec = torch.randn(16, generator=torch.Generator().manual_seed(seed + 10)) * 3
    return toks, SteeringVector(vec, SITE)


def test_gen_modes():
    assert GEN_MODES == ("prompt", "generated", "from_last")


@pytest.mark.parametrize("mode", [None, *GEN_MODES])
def test_cache_and_no_cache_give_same_steered_tokens(llama_tiny, mode):
    # llama-style (rotary): TL's cached generate is exact there; see test_tl_cache_bug_absolute_pos below.
    changed = 0
    for seed in range(3):
        toks, sv = _case(seed)
        base = generate(llama_tiny, toks, None, max_new_tokens=N_NEW, return_tokens=True)
        a = generate(llama_tiny, toks, sv, pos=mode, max_new_tokens=N_NEW, use_past_kv_cache=True, return_tokens=True)
        b = generate(llama_tiny, toks, sv, pos=mode, max_new_tokens=N_NEW, use_past_kv_cache=False,
                     return_tokens=True)
        assert a.tolist() == b.tolist()
        changed += int(not torch.equal(a, base))
        if mode == "generated":  # the first new token comes from the (unsteered) prompt
            assert a[0, 4] == base[0, 4]
    assert changed >= 2  # the vector actually steers


def test_core_last_equals_from_last_with_the_cache_only(llama_tiny):
    """With the KV cache each step is a 1-position forward, so the core "last" steers the last prompt token
    and every generated one, as "from_last" does; without the cache every step re-runs the whole sequence
    and "last" steers only its final position (earlier generated tokens lose the vector)."""
    differs = 0
    for seed in range(4):
        toks, sv = _case(seed)
        from_last = generate(llama_tiny, toks, sv, pos="from_last", max_new_tokens=N_NEW, return_tokens=True)
        cached = generate(llama_tiny, toks, sv, pos="last", max_new_tokens=N_NEW, use_past_kv_cache=True,
                          return_tokens=True)
        uncached = generate(llama_tiny, toks, sv, pos="last", max_new_tokens=N_NEW, use_past_kv_cache=False,
                            return_tokens=True)
        assert cached.tolist() == from_last.tolist()
        assert uncached[0, 4] == cached[0, 4]  # the first step is the same single forward of the prompt
        differs += int(not torch.equal(uncached, cached))
    assert differs >= 1


def _steered_positions(model, iv, toks, use_cache):
    """Per forward call of ``model.generate``, the positions where ``iv`` changed the activation at SITE."""
    before, after = {}, {}
    rec = capture(SITE, before, append=True) + iv + capture(SITE, after, append=True)
    with torch.no_grad(), rec.applied(model):
        model.generate(toks, max_new_tokens=N_NEW, use_past_kv_cache=use_cache, do_sample=False, verbose=False,
                       stop_at_eos=False)
    out = []
    for x, y in zip(before[SITE], after[SITE]):
        changed = (y - x)[0].abs().amax(-1) > 1e-6
        out.append(changed.nonzero().flatten().tolist())
    return out


def _expected(mode, plen, use_cache):
    """Absolute positions each mode steers, per forward call (N_NEW calls for N_NEW new tokens)."""
    def chosen(t):
        return {None: True, "prompt": t < plen, "generated": t >= plen, "from_last": t >= plen - 1}[mode]

    calls = []
    for step in range(N_NEW):
        if use_cache:  # the prompt once, then one new position per step
            positions = range(plen) if step == 0 else [plen + step - 1]
            calls.append([i for i, t in enumerate(positions) if chosen(t)])
        else:  # the whole sequence every step
            calls.append([t for t in range(plen + step) if chosen(t)])
    return calls


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("mode", [None, *GEN_MODES])
@pytest.mark.parametrize("given_len", [True, False], ids=["prompt_len", "learned"])
def test_positions_steered_during_generation(llama_tiny, mode, use_cache, given_len):
    toks, sv = _case(0)
    plen = toks.shape[1]
    iv = sv.to_intervention(1.0, mode, prompt_len=plen if given_len and mode is not None else None)
    assert _steered_positions(llama_tiny, iv, toks, use_cache) == _expected(mode, plen, use_cache)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_core_last_position_during_generation(llama_tiny, use_cache):
    toks, sv = _case(1)
    got = _steered_positions(llama_tiny, sv.to_intervention(1.0, "last"), toks, use_cache)
    if use_cache:
        assert got == [[3]] + [[0]] * (N_NEW - 1)  # the last position of each forward: 1-position steps
    else:
        assert got == [[3 + step] for step in range(N_NEW)]


def test_modes_touch_the_right_positions_in_one_forward(gpt2_tiny, tokens):
    sv = SteeringVector(torch.ones(16), SITE)
    store: dict = {}

    def grab(act, hook):
        store["x"] = act.clone()

    gpt2_tiny.run_with_hooks(tokens, fwd_hooks=[(SITE, grab)])
    base = store["x"]

    def steered(iv):
        gpt2_tiny.run_with_hooks(tokens, fwd_hooks=iv.fwd_hooks() + [(SITE, grab)])
        return (store["x"] - base)[0, :, 0].round(decimals=4).tolist()

    assert steered(sv.to_intervention(1.0)) == [1.0] * 10  # pos=None: every position
    assert steered(sv.to_intervention(1.0, "last")) == [0.0] * 9 + [1.0]
    assert steered(sv.to_intervention(1.0, "prompt", prompt_len=7)) == [1.0] * 7 + [0.0] * 3
    assert steered(sv.to_intervention(1.0, "generated", prompt_len=7)) == [0.0] * 7 + [1.0] * 3
    assert steered(sv.to_intervention(1.0, "from_last", prompt_len=7)) == [0.0] * 6 + [1.0] * 4
    # without prompt_len the first pass is the prompt: "from_last" is the last position, "generated" none
    assert steered(sv.to_intervention(1.0, "from_last")) == [0.0] * 9 + [1.0]
    assert steered(sv.to_intervention(1.0, "generated")) == [0.0] * 10
    assert steered(sv.to_intervention(1.0, "prompt")) == [1.0] * 10


def test_generated_mode_beats_a_static_slice(llama_tiny):
    """A plain position slice steers wrongly with the cache (each cached step has pos = 1)."""
    toks, sv = _case(0)
    ref = generate(llama_tiny, toks, sv, pos="generated", max_new_tokens=N_NEW, use_past_kv_cache=False,
                   return_tokens=True)
    naive = steer(SITE, sv.vector, pos={"slice": [4, None]})
    with torch.no_grad(), naive.applied(llama_tiny):
        cached = llama_tiny.generate(toks, max_new_tokens=N_NEW, use_past_kv_cache=True, do_sample=False,
                                     verbose=False, stop_at_eos=False)
    assert not torch.equal(cached, ref)


def test_generate_with_intervention_and_errors(llama_tiny):
    toks, sv = _case(1)
    a = generate(llama_tiny, toks, sv.to_intervention(1.0), max_new_tokens=3, return_tokens=True)
    b = generate(llama_tiny, toks[0], sv, max_new_tokens=3, return_tokens=True)
    assert a.tolist() == b.tolist()
    # a ready Intervention in a generation-aware mode learns the prompt length from the first pass
    c = generate(llama_tiny, toks, sv.to_intervention(2.0, "generated"), max_new_tokens=3, return_tokens=True)
    d = generate(llama_tiny, toks, sv, scale=2.0, pos="generated", max_new_tokens=3, return_tokens=True)
    assert c.tolist() == d.tolist()
    with pytest.raises(FuncnetError, match="max_new_tokens"):
        generate(llama_tiny, toks, sv, max_new_tokens=0)
    with pytest.raises(FuncnetError, match="one row of ids"):
        generate(llama_tiny, torch.tensor([[1, 2], [3, 4]]), sv, return_tokens=True)
    with pytest.raises(FuncnetError, match="steering should be"):
        generate(llama_tiny, toks, sv.vector, return_tokens=True)
    with pytest.raises(FuncnetError, match="every position is pos=None"):
        generate(llama_tiny, toks, sv, pos="all", return_tokens=True)


def test_tl_cache_bug_absolute_pos(gpt2_tiny):
    """Documents a TransformerLens 3.9 bug: cached generate on absolute positional embeddings differs from
    uncached generate even without hooks (get_residual re-embeds the full sequence at pos_offset)."""
    from tl_testing import make_gpt2_style

    m = make_gpt2_style(n_ctx=64).eval()
    toks = torch.randint(0, 50, (1, 4), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=N_NEW, do_sample=False, verbose=False, stop_at_eos=False)
    a = m.generate(toks, use_past_kv_cache=True, **kw)
    b = m.generate(toks, use_past_kv_cache=False, **kw)
    if torch.equal(a, b):
        pytest.skip("TransformerLens fixed cached generation for absolute positions")
    assert not torch.equal(a, b)
