"""SAE adapters on the real SmolLM2 (no training here: a random SAE, plus trained ones if the benchmark saved them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SITE = "blocks.6.hook_resid_post"
TEXTS = ["The capital of France is Paris, and the capital of Italy is Rome.",
         "She opened the window and the cold air filled the small kitchen."]
BENCH_SAES = Path(__file__).resolve().parents[2] / "bench_out" / "sae"


def _random_sae(d_in: int = 576, d_sae: int = 1024):
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = SITE
    torch.manual_seed(0)
    return StandardSAE(cfg).eval()


@pytest.mark.slow
@torch.no_grad()
def test_sae_ops_on_smollm2(smollm2):
    from tl_funcnet.sae import ablate_features, capture_features, evaluate_sae, splice

    sae = _random_sae()
    toks = smollm2.to_tokens(TEXTS[0])
    base = smollm2(toks)
    store = {}
    with (splice(sae, use_error_term=True) + capture_features(sae, store, key="f")).applied(smollm2):
        spliced = smollm2(toks)
    torch.testing.assert_close(spliced, base, atol=1e-4, rtol=0)
    f = store["f"][0, -1]
    feat = int(f.argmax())
    assert float(f[feat]) > 0
    with ablate_features(sae, [feat], pos="last").applied(smollm2):
        ablated = smollm2(toks)
    torch.testing.assert_close(ablated[:, :-1], base[:, :-1], atol=1e-4, rtol=0)
    assert float((ablated[0, -1] - base[0, -1]).abs().max()) > 1e-3
    m = evaluate_sae(smollm2, sae, TEXTS, max_tokens_per_seq=32)
    assert m.n_tokens > 20 and m.ce_loss_base < m.ce_loss_zero
    assert 0 < m.eps_lbo <= m.max_decoder_cos + 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not (BENCH_SAES / SITE / "cfg.json").is_file(), reason="run benchmarks/sae.py to train the SAEs")
@torch.no_grad()
def test_trained_benchmark_sae_reconstructs(smollm2):
    from tl_funcnet.sae import evaluate_sae, load_sae

    m = evaluate_sae(smollm2, load_sae(BENCH_SAES / SITE), TEXTS, site=SITE, max_tokens_per_seq=32)
    assert m.explained_variance > 0.3
    assert m.ce_loss_recovered > 0.3
