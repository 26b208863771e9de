"""The tl-funcnet command line: fast help, info, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

from tl_funcnet.cli import build_parser, main


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom tl_funcnet.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_lists_feature_commands():
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"info", "demo", "extract", "ablate"} <= set(sub)


def test_cli_info_json(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["tl_funcnet"] and set(data["models"]) == {"smollm2-135m", "minilm-l6"}


def test_cli_bad_model_is_a_clear_error(capsys, tmp_path):
    code = main(["extract", "--model", "no-such-model", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown model 'no-such-model'" in err
    assert not (tmp_path / "x").exists()
