"""The tl-funcnet command line: one command list for every entry point, fast help, and bad input that fails at
once: one line on stderr, a non-zero exit code, nothing written, and no model loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tl_funcnet.cli import build_parser, main
from tl_funcnet.cli._base import COMMANDS

EXPECTED_COMMANDS = {"info", "demo", "extract", "ablate", "prune", "fingerprint", "patch", "circuit", "train-sae",
                     "steer", "dashboard"}
HEAVY = ("torch", "transformer_lens", "sae_lens")


def _listed_commands(help_text: str) -> list[str]:
    """The subcommands a --help text lists (argparse prints them as {a,b,c} in the usage line)."""
    m = re.search(r"\{([a-z0-9_,-]+)\}", help_text)
    assert m, help_text
    return m.group(1).split(",")


def test_build_parser_returns_parser_and_a_handler_per_command():
    parser, handlers = build_parser()
    assert set(handlers) == set(COMMANDS) == EXPECTED_COMMANDS
    assert all(callable(h) for h in handlers.values())
    assert _listed_commands(parser.format_help()) == list(COMMANDS)


@pytest.mark.parametrize("entry", [["-m", "tl_funcnet"], ["-m", "tl_funcnet.cli"]], ids=["tl_funcnet", "cli"])
def test_help_of_each_entry_point_lists_every_registered_command(entry):
    out = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    listed = _listed_commands(out.stdout)
    assert listed == list(COMMANDS) and set(listed) == EXPECTED_COMMANDS
    for name, (_, help_text) in COMMANDS.items():  # each command has its line with its help text
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(help_text[:30])}", out.stdout, re.M), name


def test_console_script_lists_the_same_commands():
    script = Path(sys.executable).with_name("tl-funcnet")
    if not script.exists():
        pytest.skip("the tl-funcnet console script is not installed in this environment")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and _listed_commands(out.stdout) == list(COMMANDS)


_HELP_IMPORTS = """
import runpy, sys, io, contextlib
heavy = {heavy!r}
for argv in [["--help"]] + [[name, "--help"] for name in {commands!r}]:
    sys.argv = ["tl-funcnet", *argv]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            runpy.run_module({module!r}, run_name="__main__")
        except SystemExit as stop:
            assert stop.code in (0, None), (argv, stop.code)
    assert "usage:" in out.getvalue(), argv
    loaded = sorted(m for m in heavy if m in sys.modules)
    assert not loaded, (argv, loaded)
print("ok")
"""


@pytest.mark.parametrize("module", ["tl_funcnet", "tl_funcnet.cli"])
def test_help_imports_neither_torch_nor_transformer_lens_nor_sae_lens(module):
    code = _HELP_IMPORTS.format(heavy=HEAVY, commands=list(COMMANDS), module=module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_cli_info_json(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["tl_funcnet"] and set(data["models"]) == {"smollm2-135m", "minilm-l6"}


def test_cli_bad_model_is_a_clear_error(capsys, tmp_path):
    code = main(["extract", "--model", "no-such-model", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown model 'no-such-model'" in err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- bad input fails before any work


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with a few input files; the commands run there."""
    monkeypatch.chdir(tmp_path)
    Path("corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, "weights.safetensors")  # a readable safetensors, but no fingerprint
    Path("prompts.txt").write_text("a fine day\nanother fine day\n")
    user = Path("user")
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("three years of work")
    (user / "sub" / "data.csv").write_text("a,b\n")
    Path("plain.txt").write_text("not an artefact")
    return tmp_path


def _steer(*extra):
    return ["steer", "--positive", "prompts.txt", "--negative", "prompts.txt", "--site", "blocks.0.hook_resid_post",
            "--prompt", "hello", *extra]


# (id, argv, the --out path that must not appear, what stderr says)
BAD_ARGS = [
    ("patch-layers-abc", ["patch", "--layers", "abc"], None, "argument --layers: expected comma-separated integers"),
    ("patch-layers-negative", ["patch", "--layers", "1,-2"], None, "argument --layers"),
    ("patch-unknown-task", ["patch", "--task", "nosuch"], None, "unknown task 'nosuch'"),
    ("patch-missing-task-file", ["patch", "--task", "nosuch.json"], None, "nosuch.json"),
    ("patch-bad-method", ["patch", "--method", "fast"], None, "argument --method: invalid choice"),
    ("circuit-no-edges", ["circuit"], None, "the following arguments are required: --edges"),
    ("circuit-edges-0", ["circuit", "--edges", "0"], None, "argument --edges: expected an integer >= 1"),
    ("circuit-bad-method", ["circuit", "--edges", "9", "--method", "acdc"], None, "argument --method: invalid choice"),
    ("circuit-bad-ablation", ["circuit", "--edges", "9", "--ablation", "resample"], None, "argument --ablation"),
    ("circuit-n-pairs-0", ["circuit", "--edges", "9", "--n-pairs", "0"], None, "argument --n-pairs"),
    ("circuit-unknown-task", ["circuit", "--edges", "9", "--task", "nosuch"], None, "unknown task 'nosuch'"),
    ("circuit-missing-task-file", ["circuit", "--edges", "9", "--task", "t.json"], None, "t.json does not exist"),
    ("circuit-unknown-model", ["circuit", "--edges", "9", "--model", "nosuch", "--out", "C"], "C",
     "unknown model 'nosuch'"),
    ("circuit-encoder", ["circuit", "--edges", "9", "--model", "minilm-l6"], None, "causal decoders"),
    ("circuit-exact-without-sample", ["circuit", "--edges", "9", "--method", "exact", "--out", "C"], "C",
     "give --sample K"),
    ("circuit-exact-sample-curve", ["circuit", "--edges", "9", "--method", "exact", "--sample", "5", "--curve"], None,
     "--curve needs a score for every edge"),
    ("circuit-sample-abc", ["circuit", "--edges", "9", "--method", "exact", "--sample", "abc"], None,
     "argument --sample"),
    ("circuit-sample-without-exact", ["circuit", "--edges", "9", "--sample", "5"], None,
     "--sample applies to --method exact"),
    ("circuit-steps-without-ig", ["circuit", "--edges", "9", "--method", "eap", "--steps", "3"], None,
     "--steps applies to eap-ig-inputs and eap-ig-activations"),
    ("circuit-steps-0", ["circuit", "--edges", "9", "--steps", "0"], None, "argument --steps"),
    ("circuit-networks-missing", ["circuit", "--edges", "9", "--networks", "nonets"], None, "nonets"),
    ("circuit-networks-not-networks", ["circuit", "--edges", "9", "--networks", "plain.txt"], None, "plain.txt"),
    ("circuit-network-ids-alone", ["circuit", "--edges", "9", "--network-ids", "1"], None, "give --networks"),
    ("circuit-network-ids-abc", ["circuit", "--edges", "9", "--network-ids", "a,b"], None, "argument --network-ids"),
    ("circuit-plot-not-a-picture", ["circuit", "--edges", "9", "--plot", "plain.txt", "--overwrite"], None,
     "name a picture file ending in one of .png"),
    ("circuit-plot-missing-folder", ["circuit", "--edges", "9", "--plot", "missing/c.png"], None,
     "the folder missing does not exist"),
    ("circuit-plot-below-file", ["circuit", "--edges", "9", "--plot", "plain.txt/c.png"], None,
     "plain.txt is a file, not a folder"),
    ("circuit-plot-inside-out", ["circuit", "--edges", "9", "--out", "user", "--plot", "user/c.png"], None,
     "is inside --out user"),
    ("circuit-out-user-folder", ["circuit", "--edges", "9", "--out", "user", "--overwrite"], None,
     "is not a saved circuit"),
    ("circuit-out-file", ["circuit", "--edges", "9", "--out", "plain.txt"], None, "plain.txt"),
    ("extract-n-networks-0", ["extract", "--n-networks", "0", "--out", "X"], "X", "argument --n-networks"),
    ("extract-no-out", ["extract"], None, "the following arguments are required: --out"),
    ("extract-missing-texts", ["extract", "--texts", "missing/texts.txt", "--out", "X"], "X",
     "corpus path 'missing/texts.txt' does not exist"),
    ("extract-out-user-folder", ["extract", "--out", "user"], None, "user exists and is not a saved"),
    ("extract-out-user-folder-overwrite", ["extract", "--out", "user", "--overwrite"], None, "is not a saved"),
    ("extract-out-file", ["extract", "--out", "plain.txt", "--overwrite"], None, "plain.txt"),
    ("extract-out-below-file", ["extract", "--out", "plain.txt/X"], None, "is a file, not a folder"),
    ("prune-ratio-2", ["prune", "--ratio", "2", "--out", "X"], "X", "argument --ratio: expected a fraction"),
    ("prune-ratio-nan", ["prune", "--ratio", "nan", "--out", "X"], "X", "argument --ratio"),
    ("prune-missing-texts", ["prune", "--ratio", "0.5", "--texts", "missing.txt", "--out", "X"], "X",
     "corpus path 'missing.txt' does not exist"),
    ("prune-missing-eval-texts", ["prune", "--ratio", "0.5", "--eval-texts", "missing.jsonl", "--out", "X"], "X",
     "missing.jsonl"),
    ("prune-out-user-folder", ["prune", "--ratio", "0.5", "--out", "user"], None, "is not a saved model"),
    ("prune-key-fraction-2", ["prune", "--ratio", "0.5", "--method", "fn_guided", "--key-fraction", "2", "--out",
                               "X"], "X", "argument --key-fraction: expected a fraction between 0 and 1"),
    ("prune-unknown-base", ["prune", "--ratio", "0.5", "--method", "fn_guided", "--base", "magnitude", "--out", "X"],
     "X", "argument --base: invalid choice"),
    ("demo-unknown-model", ["demo", "--model", "nosuch", "--out", "D"], "D", "unknown model 'nosuch'"),
    ("demo-out-user-folder", ["demo", "--out", "user", "--overwrite"], None, "is not a saved demo report"),
    ("fingerprint-corrupt-victim", ["fingerprint", "--victim", "corrupt.safetensors", "--save", "F"], "F",
     "corrupt.safetensors is a file but not a readable fingerprint"),
    ("fingerprint-other-safetensors", ["fingerprint", "--victim", "weights.safetensors", "--suspect", "smollm2"],
     None, "not a readable fingerprint"),
    ("fingerprint-nothing-to-do", ["fingerprint", "--victim", "smollm2"], None, "nothing to do"),
    ("fingerprint-missing-texts", ["fingerprint", "--victim", "smollm2", "--texts", "missing", "--save", "F"], "F",
     "corpus path 'missing' does not exist"),
    ("fingerprint-unknown-suspect", ["fingerprint", "--victim", "smollm2", "--suspect", "nosuch"], None,
     "unknown model 'nosuch'"),
    ("fingerprint-save-onto-user-file", ["fingerprint", "--victim", "smollm2", "--save", "plain.txt", "--overwrite"],
     None, "plain.txt exists and is not a fingerprint file"),
    ("steer-missing-prompt-file", ["steer", "--positive", "missing.txt", "--negative", "prompts.txt", "--site",
                                   "blocks.0.hook_resid_post", "--prompt", "hi"], None,
     "argument --positive: 'missing.txt' is not an existing file"),
    ("steer-empty-prompt", _steer()[:-1] + [" "], None, "--prompt is empty"),
    ("steer-bad-scale", _steer("--scale", "inf"), None, "argument --scale: expected a finite number"),
    ("steer-unknown-model", _steer("--model", "nosuch"), None, "unknown model 'nosuch'"),
    ("train-sae-k-0", ["train-sae", "--k", "0", "--out", "X"], "X", "argument --k: expected an integer >= 1"),
    ("train-sae-k-above-d-sae", ["train-sae", "--k", "64", "--d-sae", "32", "--out", "X"], "X",
     r"--k (64) cannot exceed --d-sae (32)"),
    ("train-sae-bad-architecture", ["train-sae", "--architecture", "relu", "--out", "X"], "X",
     "argument --architecture: invalid choice: 'relu'"),
    ("train-sae-missing-texts", ["train-sae", "--texts", "missing/", "--out", "X"], "X", "does not exist"),
    ("train-sae-out-below-file", ["train-sae", "--out", "plain.txt"], None, "is a file, not a folder"),
    ("ablate-missing-networks", ["ablate", "--networks", "missing"], None, "missing is missing; expected a folder"),
    ("ablate-bad-mode", ["ablate", "--networks", "user", "--mode", "erase"], None, "argument --mode"),
    ("info-unknown-option", ["info", "--verbose"], None, "unrecognized arguments: --verbose (see tl-funcnet info"),
    ("extract-unknown-option", ["extract", "--out", "X", "--bogus", "1"], "X", "unrecognized arguments: --bogus 1"),
    ("unknown-command", ["explode"], None, "argument command: invalid choice: 'explode'"),
]


@pytest.mark.parametrize("argv, out, message", [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_bad_input_fails_at_once_with_one_line(workdir, no_model_loads, capsys, argv, out, message):
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.out == "", captured
    assert lines[0].startswith(f"tl-funcnet {argv[0]}: error: " if argv[0] in COMMANDS else "tl-funcnet: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err
    assert no_model_loads == []  # failed before loading any model
    if out is not None:
        assert not (workdir / out).exists()
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before  # nothing written anywhere
    assert (workdir / "user" / "thesis.txt").read_text() == "three years of work"
    assert (workdir / "plain.txt").read_text() == "not an artefact"


@pytest.mark.parametrize("argv", [
    ["patch", "--layers", "abc"],
    ["extract", "--texts", "missing/texts.txt", "--out", "X"],
    ["demo", "--model", "nosuch", "--out", "D"],
    ["fingerprint", "--victim", "corrupt.safetensors", "--save", "F"],
], ids=["argparse", "texts", "model", "fingerprint"])
def test_bad_input_in_a_real_process_prints_exactly_one_line(workdir, argv):
    """The same through `python -m tl_funcnet`: no warning or traceback reaches stderr."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # show every warning that is not silenced on purpose
    env.pop("TL_FUNCNET_TRACEBACK", None)
    out = subprocess.run([sys.executable, "-m", "tl_funcnet", *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(f"tl-funcnet {argv[0]}: error: "), out.stderr
    assert out.stdout == ""
    assert not any((workdir / name).exists() for name in ("X", "D", "F"))


def test_unexpected_errors_are_one_line_with_exit_code_1(workdir, monkeypatch, capsys):
    from tl_funcnet.cli import info

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(info, "_info", lambda p: broken)
    monkeypatch.setitem(COMMANDS, "info", (lambda p: broken, "versions"))
    monkeypatch.delenv("TL_FUNCNET_TRACEBACK", raising=False)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["tl-funcnet info: error: KeyError: 'surprise' (set TL_FUNCNET_TRACEBACK=1 for details)"]
    monkeypatch.setenv("TL_FUNCNET_TRACEBACK", "1")
    with pytest.raises(KeyError, match="surprise"):
        main(["info"])
