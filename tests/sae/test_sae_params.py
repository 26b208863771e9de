"""Our encode/decode math against sae-lens's own, for every supported architecture."""

from __future__ import annotations

import pytest
import torch

from sae_testing import make_sae
from tl_funcnet.errors import FuncnetError
from tl_funcnet.sae import decode, encode, sae_params
from tl_funcnet.sae.params import Normalizer

CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("standard", {"normalize_activations": "layer_norm"}),
    ("jumprelu", {}),
    ("topk", {"k": 5}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    ("abstopk", {"k": 4}),
    ("gated", {}),
    ("topafa", {}),
    ("topafa", {"rescale_acts_by_decoder_norm": True}),
    ("topafa", {"apply_b_dec_to_input": False, "normalize_activations": "layer_norm"}),
]


@pytest.mark.parametrize("arch,kw", CASES, ids=[f"{a}-{'-'.join(k) or 'default'}" for a, k in CASES])
def test_encode_decode_match_sae_lens(arch, kw):
    sae = make_sae(arch, **kw)
    p = sae_params(sae)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        ref_f = sae.encode(x)
        ref_x = sae.decode(ref_f)
    norm = Normalizer(p["normalize_activations"], 16)
    f = encode(p, x, norm)
    torch.testing.assert_close(f, ref_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decode(p, f, norm), ref_x, atol=1e-5, rtol=1e-5)
    assert 0 < int((f != 0).sum()) < f.numel()  # non-trivial sparsity: the test exercises the nonlinearity


def test_topk_keeps_exactly_k():
    p = sae_params(make_sae("topk", k=3))
    f = encode(p, torch.randn(50, 16))
    assert int((f != 0).sum(-1).max()) <= 3


def test_sae_params_clones_tensors():
    sae = make_sae("standard")
    p = sae_params(sae)
    with torch.no_grad():
        sae.W_enc.add_(1.0)
    assert not torch.equal(p["W_enc"], sae.W_enc)


def test_sae_params_rejects_unknown_objects():
    with pytest.raises(FuncnetError, match="expected a sae-lens SAE"):
        sae_params(torch.nn.Linear(3, 3))
    with pytest.raises(FuncnetError, match="not supported"):
        sae_params({"architecture": "matching_pursuit"})
