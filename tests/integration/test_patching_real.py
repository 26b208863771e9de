"""Patching on SmolLM2 (slow): tasks are solved, exact patching equals TL on a small grid, RelP tracks exact on MLPs."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.patching import TASKS, attribution_patch, correlation, exact_patch, load_task, node_grid, task_report

pytestmark = pytest.mark.slow


def test_smollm2_solves_the_shipped_tasks(smollm2):
    for name in TASKS:
        rep = task_report(smollm2, load_task(name, smollm2, n_pairs=8))
        assert rep["answer_over_distractor"] >= 0.85, rep
        assert rep["logit_diff_clean"] > 2.0 and rep["logit_diff_corrupted"] < rep["logit_diff_clean"], rep


def test_smollm2_solves_ioi_in_both_name_orders_and_sva_above_chance(smollm2):
    ioi = load_task("ioi", smollm2)
    assert len(ioi) >= 48 and ioi.n_pos == 14  # several templates, one token length
    with torch.no_grad():
        logits = smollm2(ioi.clean)[:, -1]
    d = ioi.metric()(logits[:, None])
    # ABBA: the indirect object is named first ("When Mary and John ..., John gave ... to" -> Mary)
    abba = torch.tensor([c.split(" and ")[0].split()[-1] == smollm2.to_string(int(a)).strip()
                         for (c, _), a in zip(ioi.prompts, ioi.answer)])
    assert 0 < int(abba.sum()) < len(ioi)
    for order in (abba, ~abba):
        assert (d[order] > 0).float().mean() >= 0.9 and d[order].mean() > 3.0
    sva = task_report(smollm2, load_task("sva", smollm2))
    assert sva["answer_over_distractor"] >= 0.9 and sva["logit_diff_clean"] > 2.0, sva


def test_smollm2_exact_patch_matches_single_patches_and_relp_tracks_it(smollm2):
    from tl_funcnet.hooks import patch

    task = load_task("capital", smollm2, n_pairs=4)
    metric = task.metric()
    layers = [0, 1, 2, 14, 28, 29]
    ns = node_grid(smollm2, "mlp", task.n_pos, layers=layers)
    ex = exact_patch(smollm2, task.clean, task.corrupted, ns, metric, max_rows=64)
    with torch.no_grad():
        assert ex.baseline == pytest.approx(metric(smollm2(task.corrupted)).mean().item(), abs=1e-4)
    grid = ex.grid()
    assert grid.shape == (len(layers), task.n_pos) and not grid.isnan().any()
    _, cache = smollm2.run_with_cache(task.clean, names_filter=lambda n: n.endswith("hook_mlp_out"))
    for L, p in [(0, 3), (14, 4), (29, 4)]:  # one plain patched forward each, TL-style
        site = f"blocks.{L}.hook_mlp_out"
        with patch(site, cache[site], pos=p).applied(smollm2), torch.no_grad():
            want = metric(smollm2(task.corrupted)).mean().item()
        # effects are changes of the mean metric: the patched metric is baseline + effect
        assert ex.baseline + grid[layers.index(L), p].item() == pytest.approx(want, abs=1e-4)
    relp = attribution_patch(smollm2, task.clean, task.corrupted, ns, metric, method="relp")
    assert relp.effects.shape == ex.effects.shape and relp.baseline == pytest.approx(ex.baseline, abs=1e-4)
    assert correlation(ex, relp)["pearson"] > 0.8
    frame = ex.to_frame()
    assert len(frame) == len(layers) * task.n_pos and frame["effect"].tolist() == ex.effects.tolist()
