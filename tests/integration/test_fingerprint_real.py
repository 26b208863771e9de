"""FNF on the real SmolLM2 through the CLI with a saved victim fingerprint.

The rotated-residual, permuted, random-init and MiniLM (other tokenizer) checks on the real models run as
assertions in notebooks/04_fingerprinting.ipynb, which the test command executes.
"""

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


def test_cli_with_a_saved_victim_fingerprint(smol_fp, tmp_path, capsys):
    from tl_funcnet.cli import main
    from tl_funcnet.errors import OverwriteError

    path = smol_fp.save(tmp_path / "smol.fnf.safetensors")
    with pytest.raises(OverwriteError, match="overwrite=True"):
        smol_fp.save(path)
    assert smol_fp.save(path, overwrite=True) == path
    assert main(["fingerprint", "--victim", str(path), "--suspect", "smollm2-135m", "--n-null", "100",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["score"] > 0.99 and out["verdict"] == "derived" and out["p_value"] < 0.02
    assert out["settings"]["n_null"] == 100
