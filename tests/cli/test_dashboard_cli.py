"""``tl-funcnet dashboard`` end to end on SmolLM2: cards of saved networks and of a saved SAE's features in one
report file; ids out of range and bad paths refused before the model loads."""

from __future__ import annotations

import json

import pytest

from sae_testing import make_sae
from tl_funcnet.cli import main
from tl_funcnet.dashboards.report import KIND

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    out = tmp_path_factory.mktemp("nets") / "nets"
    assert main(["extract", "--site", "mlp.hook_post", "--max-tokens", "384", "--n-networks", "4", "--out",
                 str(out), "--json"]) == 0
    return out


def _run(capsys, *argv):
    code = main(["dashboard", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_network_cards_of_saved_networks(networks, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "nets.html"
    code, stdout, _ = _run(capsys, "--networks", str(networks), "--ids", "0", "2", "--max-tokens", "384",
                           "--eval-texts", "evaluation", "--max-eval-texts", "1", "--k", "4", "--out", str(out),
                           "--json")
    assert code == 0
    payload = json.loads(stdout)
    assert [c["title"] for c in payload["cards"]] == ["Network 0", "Network 2"]
    assert all("loss_change" in c and "loss_change_random" in c for c in payload["cards"])
    assert KIND.holds(out) and out.read_text().count("tlfn-card'") == 2
    code, _, err = _run(capsys, "--networks", str(networks), "--out", str(out))  # exists: needs --overwrite
    assert code != 0 and "overwrite" in err


def test_feature_cards_of_a_saved_sae(tmp_path, capsys):
    from tl_funcnet.sae import save_sae

    folder = save_sae(make_sae("standard", d_in=576, d_sae=64, hook_name="blocks.3.hook_resid_post"),
                      tmp_path / "sae")
    out = tmp_path / "features.html"
    code, stdout, _ = _run(capsys, "--sae", str(folder), "--ids", "3", "5", "--max-tokens", "256",
                           "--skip-positions", "1", "--k", "3", "--out", str(out), "--json")
    assert code == 0
    assert [c["title"] for c in json.loads(stdout)["cards"]] == ["Feature 3", "Feature 5"]
    assert KIND.holds(out)


def test_bad_input_is_refused_before_the_model_loads(networks, tmp_path, capsys, monkeypatch):
    import tl_funcnet.models

    monkeypatch.setattr(tl_funcnet.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "r.html"
    for argv, message in [
        (["--networks", str(networks), "--ids", "4", "--out", str(out)], "network ids [4] are out of range"),
        (["--networks", str(tmp_path / "none"), "--out", str(out)], "none"),
        (["--networks", str(networks), "--out", "/proc/tl_funcnet.html"], "not writable"),
        (["--networks", str(networks), "--texts", str(tmp_path / "no.txt"), "--out", str(out)], "no.txt"),
    ]:
        code, _, err = _run(capsys, *argv)
        assert code != 0 and message in err, (argv, err)
        assert not out.exists()
