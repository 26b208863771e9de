"""Bad command lines: every subcommand exits non-zero with one line on stderr and no traceback, before loading a
model, and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability_tally import record_cli, snapshot


def _cases(root: Path) -> dict[str, list[str]]:
    bad_fp = root / "victim.safetensors"
    bad_fp.write_bytes(b"\x00" * 40)
    nets = root / "fake_nets"
    nets.mkdir()
    (nets / "networks.json").write_text("{}")
    out = str(root / "out")
    return {
        "no subcommand": [],
        "unknown subcommand": ["frobnicate"],
        "info unknown option": ["info", "--verbose"],
        "demo unknown model": ["demo", "--model", "nosuch", "--out", out],
        "demo out is a user's file": ["demo", "--out", str(root / "thesis.txt")],
        "demo out holds user files": ["demo", "--out", str(root)],
        "demo out in an unwritable folder": ["demo", "--out", "/proc/tl_funcnet_demo"],
        "demo unknown backend": ["demo", "--backend", "onnx", "--out", out],
        "dashboard without networks or sae": ["dashboard", "--out", out],
        "dashboard networks and sae": ["dashboard", "--networks", str(nets), "--sae", str(nets), "--out", out],
        "dashboard k 0": ["dashboard", "--networks", str(nets), "--k", "0", "--out", out],
        "dashboard negative id": ["dashboard", "--networks", str(nets), "--ids", "-1", "--out", out],
        "dashboard corrupt networks": ["dashboard", "--networks", str(nets), "--out", out],
        "dashboard eval texts with an sae": ["dashboard", "--sae", str(nets), "--eval-texts", "evaluation",
                                             "--out", out],
        "dashboard out is a user's file": ["dashboard", "--networks", str(nets), "--out", str(root / "thesis.txt")],
        "extract n-networks 0": ["extract", "--n-networks", "0", "--out", out],
        "extract n-networks abc": ["extract", "--n-networks", "abc", "--out", out],
        "extract threshold -1": ["extract", "--threshold", "-1", "--out", out],
        "extract threshold nan": ["extract", "--threshold", "nan", "--out", out],
        "extract missing --out": ["extract"],
        "extract unknown scope": ["extract", "--scope", "global", "--out", out],
        "extract missing texts": ["extract", "--texts", str(root / "none.txt"), "--out", out],
        "extract out holds user files": ["extract", "--out", str(root)],
        "extract unknown model": ["extract", "--model", "gpt-17", "--out", out],
        "extract max-tokens 0": ["extract", "--max-tokens", "0", "--out", out],
        "ablate missing networks folder": ["ablate", "--networks", str(root / "nothing")],
        "ablate corrupt networks": ["ablate", "--networks", str(nets)],
        "ablate unknown mode": ["ablate", "--networks", str(nets), "--mode", "erase"],
        "ablate gain inf": ["ablate", "--networks", str(nets), "--gain", "inf"],
        "prune ratio 2": ["prune", "--ratio", "2", "--out", out],
        "prune ratio 0": ["prune", "--ratio", "0", "--out", out],
        "prune ratio abc": ["prune", "--ratio", "abc", "--out", out],
        "prune unknown method": ["prune", "--ratio", "0.2", "--method", "obs", "--out", out],
        "prune protect-first -1": ["prune", "--ratio", "0.2", "--protect-first", "-1", "--out", out],
        "prune out is a user's file": ["prune", "--ratio", "0.2", "--out", str(root / "thesis.txt")],
        "prune missing texts": ["prune", "--ratio", "0.2", "--texts", str(root / "none"), "--out", out],
        "prune missing eval texts": ["prune", "--ratio", "0.2", "--eval-texts", str(root / "x.jsonl"), "--out", out],
        "fingerprint corrupt victim file": ["fingerprint", "--victim", str(bad_fp), "--suspect", "smollm2-135m"],
        "fingerprint nothing to do": ["fingerprint", "--victim", "smollm2-135m"],
        "fingerprint unknown suspect": ["fingerprint", "--victim", "smollm2-135m", "--suspect", "nosuch-model"],
        "fingerprint n-null 0": ["fingerprint", "--victim", "smollm2-135m", "--n-null", "0", "--save", out],
        "fingerprint save over a user's file": ["fingerprint", "--victim", "smollm2-135m", "--save",
                                                str(root / "thesis.txt")],
        "fingerprint missing texts": ["fingerprint", "--victim", "smollm2-135m", "--save", out, "--texts",
                                      str(root / "none.txt")],
        "patch layers abc": ["patch", "--layers", "abc"],
        "patch layers negative": ["patch", "--layers", "-1,2"],
        "patch unknown task": ["patch", "--task", "nosuch_task"],
        "patch task file missing": ["patch", "--task", str(root / "task.json")],
        "patch n-pairs 0": ["patch", "--n-pairs", "0"],
        "patch unknown method": ["patch", "--method", "eap"],
        "patch unknown model": ["patch", "--model", "nosuch"],
        "train-sae k 0": ["train-sae", "--k", "0", "--out", out],
        "train-sae k above d-sae": ["train-sae", "--k", "64", "--d-sae", "32", "--out", out],
        "train-sae lr 0": ["train-sae", "--lr", "0", "--out", out],
        "train-sae missing texts": ["train-sae", "--texts", str(root / "nothing"), "--out", out],
        "train-sae out inside a user's file": ["train-sae", "--out", str(root / "thesis.txt")],
        "steer missing prompt files": ["steer", "--positive", str(root / "p.txt"), "--negative", str(root / "n.txt"),
                                       "--site", "blocks.6.hook_resid_post", "--prompt", "Hi"],
        "steer scale inf": ["steer", "--positive", str(root / "thesis.txt"), "--negative", str(root / "thesis.txt"),
                            "--site", "blocks.6.hook_resid_post", "--prompt", "Hi", "--scale", "inf"],
        "steer empty prompt": ["steer", "--positive", str(root / "thesis.txt"), "--negative",
                               str(root / "thesis.txt"), "--site", "blocks.6.hook_resid_post", "--prompt", "  "],
        "steer unknown pos": ["steer", "--positive", str(root / "thesis.txt"), "--negative", str(root / "thesis.txt"),
                              "--site", "blocks.6.hook_resid_post", "--prompt", "Hi", "--pos", "all"],
        "steer missing site": ["steer", "--positive", str(root / "thesis.txt"), "--negative", str(root / "thesis.txt"),
                               "--prompt", "Hi"],
    }


def _names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return list(_cases(Path(tmp)))


@pytest.mark.parametrize("name", _names())
def test_bad_command_line(name, user_folder, capsys, monkeypatch):
    import tl_funcnet.models
    import tl_funcnet.models._load as loading
    from tl_funcnet.cli import main

    argv = _cases(user_folder)[name]

    def no_loading(*args, **kwargs):
        raise AssertionError(f"{name}: a model was loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load", no_loading)
    monkeypatch.setattr(tl_funcnet.models, "load", no_loading)
    before = snapshot(user_folder)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    after = snapshot(user_folder)
    lines = [line for line in err.splitlines() if line.strip()]
    written = sorted(set(after) - set(before))
    lost = sorted(k for k in before if after.get(k) != before[k])
    rejected = code != 0 and len(lines) == 1 and "Traceback" not in err and "AssertionError" not in err
    outcome = record_cli(f"cli: {name}", rejected, written, lost, err.strip())
    assert outcome.clean, (outcome, err)
