"""Activation sparsity and CFSP on a TransformerBridge give what they give on the HookedTransformer twin."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.evaluate import evaluate
from tl_funcnet.pruning import Calibration, plan_from_scores, score
from tl_funcnet.sparsity import METHODS, calibrate_sparsity

pytestmark = pytest.mark.bridge


def _texts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g) for _ in range(12)]


@pytest.mark.parametrize("method,where", [(m, "hidden") for m in METHODS] + [("wina", "input")])
def test_calibrated_sparsity_matches_the_hooked_twin(bridge, twin, method, where):
    texts = _texts()
    got = {}
    protect = {0: [0, 1, 2]} if where == "hidden" else None
    for name, model in (("bridge", bridge), ("twin", twin)):
        sp = calibrate_sparsity(model, Calibration.from_texts(model, texts, max_tokens=None), method, 0.4,
                                where=where, protect=protect)
        loss = evaluate(model, texts, sp.to_intervention(model), compare_to_base=False, progress=False).loss
        got[name] = (sp, loss, sp.measure(model, texts)["mean"])
    (b, lb, rb), (t, lt, rt) = got["bridge"], got["twin"]
    for l in b.thresholds:
        torch.testing.assert_close(b.thresholds[l], t.thresholds[l], rtol=1e-4, atol=1e-6)
    assert lb == pytest.approx(lt, rel=1e-4) and rb == pytest.approx(rt, abs=0.01) and abs(rb - 0.4) < 0.02


def test_cfsp_plans_match_the_hooked_twin(bridge, twin):
    plans = [plan_from_scores(m, score(m, Calibration.from_texts(m, _texts(), max_tokens=None), "cfsp"), 0.3, "cfsp",
                              protect_first=0, protect_last=0) for m in (bridge, twin)]
    assert all(torch.equal(a, b) for a, b in zip(plans[0].pruned, plans[1].pruned))
