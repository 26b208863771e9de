"""FN pruning on the real SmolLM2-135M: the hard prune equals the soft prune and shrinks the model."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fn_prune_smollm2_hard_equals_soft_and_perplexity_stays_finite(smollm2, tmp_path):
    from tl_funcnet.data import load_corpus
    from tl_funcnet.evaluate import evaluate
    from tl_funcnet.models import load, mlp_widths, save
    from tl_funcnet.pruning import Calibration, hard_prune, plan_pruning

    model = smollm2  # read-only: hard_prune returns a copy, the soft prune is a scoped intervention
    before = {k: v.clone() for k, v in model.blocks[5].mlp.state_dict().items()}
    calib = Calibration.from_texts(model, "calibration", max_tokens=512, max_tokens_per_seq=128)
    plan = plan_pruning(model, 0.2, "fn", calib, n_networks=16, n_restarts=1)  # compensation means included
    assert plan.means is not None
    assert plan.widths_after[:3] == [1536] * 3 and plan.widths_after[-2:] == [1536] * 2
    assert plan.n_pruned == round(0.2 * 30 * 1536)
    small = hard_prune(model, plan)
    counts = plan.param_counts(model)
    assert counts["params_after"] == sum(p.numel() for p in small.parameters())
    assert 0.05 < counts["param_ratio"] < 0.15  # embeddings and attention are not pruned
    assert abs(counts["mlp_param_ratio"] - 0.2) < 1e-3  # b_out stays

    texts = load_corpus("evaluation")[:2]
    toks = model.to_tokens(texts[0])[:, :48]
    with torch.no_grad():
        with plan.to_intervention(bias_compensation=True).applied(model):
            soft = model(toks)
        hard = small(toks)
    assert torch.allclose(soft, hard, atol=2e-3, rtol=1e-4)
    base = evaluate(model, texts, compare_to_base=False, progress=False, max_tokens_per_seq=64).perplexity
    ppl = evaluate(small, texts, compare_to_base=False, progress=False, max_tokens_per_seq=64).perplexity
    assert math.isfinite(ppl) and base < ppl < 50 * base

    assert mlp_widths(small) == plan.widths_after and small.cfg.d_mlp == 1536  # cfg.d_mlp: the widest layer
    save(small, tmp_path / "pruned")
    back = load(tmp_path / "pruned")
    assert mlp_widths(back) == plan.widths_after
    assert torch.allclose(back(toks), hard, atol=1e-4)
    assert all(torch.equal(v, model.blocks[5].mlp.state_dict()[k]) for k, v in before.items())
