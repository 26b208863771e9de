"""Concept-neuron scores: attribution (activation x dP(answer)/dactivation, max over positions) and activation
contrast, concept minus control; the top fraction as an ablation with random and top-variance controls."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError
from tl_funcnet.hooks import capture, capture_grad
from tl_funcnet.patching import NeuronScores, Task, neuron_scores

SITES = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]


def _task(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 50, (n, 6), generator=g)
    return Task(f"t{seed}", clean, clean.clone(), torch.randint(0, 50, (n,), generator=g), torch.zeros(n).long())


def _manual_attribution(model, task, site):
    acts, grads, out = {}, {}, []
    for i in range(len(task)):
        with (capture(site, acts) | capture_grad(site, grads)).applied(model):
            p = model(task.clean[i:i + 1])[0, -1].softmax(-1)[task.answer[i]]
            p.backward()
        model.zero_grad(set_to_none=True)
        out.append((acts[site] * grads[site])[0].amax(0))
    return torch.stack(out).mean(0)


def test_attribution_scores_are_concept_minus_control(gpt2_tiny):
    concept, control = _task(1), _task(2, n=3)
    s = neuron_scores(gpt2_tiny, concept, control, batch_size=2)
    assert isinstance(s, NeuronScores) and s.sites == tuple(SITES) and s.method == "attribution"
    for site in SITES:
        want = _manual_attribution(gpt2_tiny, concept, site) - _manual_attribution(gpt2_tiny, control, site)
        torch.testing.assert_close(s.scores[site], want.detach(), atol=1e-6, rtol=1e-4)


def test_contrast_scores_are_standardised_mean_differences(gpt2_tiny):
    concept, control = _task(1), _task(2)
    s = neuron_scores(gpt2_tiny, concept, control, method="contrast", sites=SITES[1])
    acts = {}
    with torch.no_grad(), capture(SITES[1], acts).applied(gpt2_tiny):
        gpt2_tiny(concept.clean)
        a = acts[SITES[1]].mean(1)
        gpt2_tiny(control.clean)
        b = acts[SITES[1]].mean(1)
    pooled = torch.cat([a - a.mean(0), b - b.mean(0)]).std(0, correction=0)
    torch.testing.assert_close(s.scores[SITES[1]], (a.mean(0) - b.mean(0)) / pooled.clamp_min(1e-6))


def test_top_fraction_and_its_controls(gpt2_tiny, tokens):
    s = neuron_scores(gpt2_tiny, _task(1), _task(2))
    top = s.top(0.1)
    assert sum(len(u) for u in top.values()) == round(0.1 * 64)
    flat = torch.cat([s.scores[x] for x in SITES])
    kept = torch.cat([s.scores[x][top[x]] for x in SITES])
    assert kept.min() >= flat.sort(descending=True).values[len(kept) - 1]
    iv = s.to_intervention(0.1)
    assert {h.site: list(h.params["units"]) for h in iv} == {k: v for k, v in top.items() if v}
    for control in ("random", "top_variance"):
        ctl = s.to_intervention(0.1, control=control, random_state=1)
        assert {h.site: len(h.params["units"]) for h in ctl} == {k: len(v) for k, v in top.items() if v}
    tv = s.to_intervention(0.1, control="top_variance")
    for h in tv:
        var = s.variance[h.site]
        assert set(h.params["units"]) == set(torch.argsort(var, descending=True)[:len(h.params["units"])].tolist())
    with iv.applied(gpt2_tiny):
        gpt2_tiny(tokens)


def test_bad_input_is_refused_before_running(gpt2_tiny):
    empty = Task("empty", torch.zeros(0, 6).long(), torch.zeros(0, 6).long(), torch.zeros(0).long(),
                 torch.zeros(0).long())
    with pytest.raises(FuncnetError, match="concept set is empty"):
        neuron_scores(gpt2_tiny, empty, _task(2))
    with pytest.raises(FuncnetError, match="control set is empty"):
        neuron_scores(gpt2_tiny, _task(1), empty)
    with pytest.raises(FuncnetError, match="method should be"):
        neuron_scores(gpt2_tiny, _task(1), _task(2), method="magic")
    s = neuron_scores(gpt2_tiny, _task(1), _task(2))
    for bad in (0, 1, 1.5, -0.1, True, "0.1"):
        with pytest.raises(FuncnetError, match="fraction"):
            s.top(bad)
    with pytest.raises(FuncnetError, match="control should be"):
        s.to_intervention(0.1, control="variance")
