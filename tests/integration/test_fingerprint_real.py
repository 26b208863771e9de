"""FNF on the real models: rotation-invariance of SmolLM2's fingerprint, the CLI, and a cross-tokenizer pair."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

N_TEXTS, N_NET = 4, 32


@pytest.fixture(scope="module")
def texts():
    from tl_funcnet.fingerprint import default_texts

    return default_texts(N_TEXTS)


@pytest.fixture(scope="module")
def smol_fp(smollm2, texts):
    from tl_funcnet.fingerprint import fingerprint

    return fingerprint(smollm2, texts, n_networks=N_NET, name="smollm2-135m")


def test_smollm2_rotated_residual_is_recognised(smollm2, smol_fp, texts):
    from tl_funcnet.fingerprint import compare, fingerprint
    from tl_funcnet.fingerprint.transforms import rotate_residual

    rotated = rotate_residual(smollm2, seed=1)
    res = compare(smol_fp, fingerprint(rotated, texts, n_networks=N_NET), n_null=100)
    del rotated
    assert res.score > 0.99 and res.verdict == "derived"
    assert res.n_texts == N_TEXTS and res.n_segments > 500


def test_minilm_other_tokenizer_aligns_and_is_not_derived(minilm, smol_fp, texts):
    from tl_funcnet.fingerprint import compare, fingerprint

    fp = fingerprint(minilm, texts, n_networks=N_NET)
    res = compare(smol_fp, fp, n_null=100)
    assert res.n_texts == N_TEXTS and res.n_segments > 500  # word segments shared across tokenizers
    assert res.score < 0.8 and res.verdict != "derived"


def test_cli_with_a_saved_victim_fingerprint(smol_fp, tmp_path, capsys):
    import tl_funcnet.fingerprint.cli  # noqa: F401  (registers the subcommand)
    from tl_funcnet.cli import main

    path = smol_fp.save(tmp_path / "smol.fnf.safetensors")
    assert main(["fingerprint", "--victim", str(path), "--suspect", "smollm2-135m", "--n-null", "100",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["score"] > 0.99 and out["verdict"] == "derived" and out["p_value"] < 0.02
