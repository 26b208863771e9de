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


def test_smollm2_exact_patch_matches_tl_and_relp_tracks_it(smollm2):
    from transformer_lens import patching as tlp

    task = load_task("capital", smollm2, n_pairs=4)
    metric = task.metric()
    ns = node_grid(smollm2, "mlp", task.n_pos, layers=[0, 1, 2, 14, 28, 29])
    ex = exact_patch(smollm2, task.clean, task.corrupted, ns, metric, max_rows=64)
    _, cache = smollm2.run_with_cache(task.clean, names_filter=lambda n: n.endswith("hook_mlp_out"))
    ref = tlp.get_act_patch_mlp_out(smollm2, task.corrupted, cache, lambda lg: metric(lg).mean())
    torch.testing.assert_close(ex.grid, ref[[0, 1, 2, 14, 28, 29]], atol=1e-4, rtol=1e-5)
    relp = attribution_patch(smollm2, task.clean, task.corrupted, ns, metric, method="relp")
    assert correlation(ex, relp)["pearson"] > 0.8
