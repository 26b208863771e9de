"""Functional networks on the embedded SmolLM2: collection, a small fit, masking against controls, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tl_funcnet.activations import collect
from tl_funcnet.evaluate import evaluate
from tl_funcnet.funcnet import FunctionalNetworks
from tl_funcnet.hooks import resolve_sites

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_networks(smollm2):
    from tl_funcnet.data import load_corpus

    sites = resolve_sites(smollm2, "mlp.hook_post")
    assert sites == [f"blocks.{l}.mlp.hook_post" for l in range(30)]
    acts = collect(smollm2, load_corpus("calibration"), "mlp.hook_post", max_tokens=768, max_tokens_per_seq=96,
                   progress=False)
    assert list(acts.sites) == sites
    return acts, FunctionalNetworks(8, threshold=3.6).fit(acts)


def test_collect_on_smollm2_matches_run_with_cache(smollm2):
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    acts = collect(smollm2, [text, "A second, shorter line."], ["blocks.5.mlp.hook_post"], progress=False)
    _, cache = smollm2.run_with_cache(text, names_filter=["blocks.5.mlp.hook_post"])
    n = cache["blocks.5.mlp.hook_post"].shape[1]
    torch.testing.assert_close(acts["blocks.5.mlp.hook_post"][:n], cache["blocks.5.mlp.hook_post"][0],
                               atol=1e-4, rtol=1e-4)


def test_masking_networks_hurts_more_than_random_on_smollm2(smollm2, smol_networks):
    from tl_funcnet.data import load_corpus

    acts, fn = smol_networks
    assert acts.n_samples == 768 and acts.n_units == 30 * 1536
    s = fn.summary()
    assert 0 < s["fraction"] < 0.05  # a few percent of neurons at most
    texts = load_corpus("evaluation")[:4]
    base = evaluate(smollm2, texts, compare_to_base=False, progress=False).loss
    masked = evaluate(smollm2, texts, fn.to_intervention("mask"), compare_to_base=False, progress=False).loss
    rand = evaluate(smollm2, texts, fn.to_intervention("mask", control="per_layer", random_state=0),
                    compare_to_base=False, progress=False).loss
    assert base < 4.5
    assert masked - base > 3 * max(rand - base, 0.01)


def test_cli_extract_and_ablate_on_saved_smollm2(smollm2, tmp_path_factory, capsys):
    from tl_funcnet.cli import main
    from tl_funcnet.models import save

    root = tmp_path_factory.mktemp("cli")
    save(smollm2, root / "smol")
    assert main(["extract", "--model", str(root / "smol"), "--site", "hook_mlp_out", "--n-networks", "4",
                 "--max-tokens", "256", "--out", str(root / "nets"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_networks"] == 4 and out["sites"] == 30 and out["n_tokens"] == 256
    nets = root / "nets"
    assert {"networks.json", "network_map.png", "layer_counts.png"} <= {p.name for p in nets.iterdir()}
    assert sorted(p.name for p in root.iterdir()) == ["nets", "smol"]  # the plots are inside the output folder
    # the output folder is replaced only with --overwrite
    argv = ["extract", "--model", str(root / "smol"), "--site", "hook_mlp_out", "--n-networks", "4",
            "--max-tokens", "256", "--out", str(nets)]
    assert main(argv) == 2 and "overwrite" in capsys.readouterr().err
    assert main(["ablate", "--model", str(root / "smol"), "--networks", str(nets), "--mode", "mask",
                 "--max-texts", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"baseline_loss", "intervened_loss", "control_loss", "control", "n_units"} <= set(res)
    assert res["control"] == "per_layer"
    assert res["n_units"] == out["n_units"] and res["intervened_loss"] > res["baseline_loss"]
    assert main(["ablate", "--model", str(root / "smol"), "--networks", str(nets), "--mode", "mask",
                 "--control", "variance_matched", "--max-texts", "2", "--json"]) == 0
    vm = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert vm["control"] == "variance_matched" and vm["intervened_loss"] == res["intervened_loss"]
