"""``tl-funcnet fingerprint --register / --registry`` end to end on two tiny saved models (char-level tokens):
registering, ranking a suspect (JSON and table), replacing an entry, and bad input that fails at once with one
line on stderr, no model loaded and nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tl_testing import SHORT_TEXTS as TEXTS

from tl_funcnet.cli import main

RANK = ["--n-null", "100", "--top-m", "4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two unrelated tiny models saved to folders, a texts file, and a registry holding both."""
    from tl_testing import make_llama_style

    from tl_funcnet.models import save

    root = tmp_path_factory.mktemp("fpreg")
    models = {}
    for name, seed in (("alpha", 0), ("beta", 7)):
        model = make_llama_style(seed, normalization_type="RMSPre", n_ctx=512, d_vocab=128, d_model=32, d_head=8,
                                 rotary_dim=8).eval()
        models[name] = str(save(model, root / name))
    texts = root / "texts.txt"
    texts.write_text("\n\n".join(TEXTS) + "\n")
    registry = root / "registry"
    return {"root": root, "models": models, "texts": str(texts), "registry": str(registry)}


def _run(capsys, *argv):
    code = main(["fingerprint", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _register(setup, capsys, model, *extra):
    return _run(capsys, "--victim", setup["models"][model], "--texts", setup["texts"], "--n-networks", "6",
                "--tokenizer", "chars", "--register", setup["registry"], *extra)


@pytest.fixture(scope="module")
def registered(setup):
    """The registry with alpha (named explicitly) and beta (named after its folder)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    outs = []
    for argv in (["--victim", setup["models"]["alpha"], "--name", "alpha-v1", "--json"],
                 ["--victim", setup["models"]["beta"]]):
        buf = io.StringIO()
        with redirect_stdout(buf), redirect_stderr(io.StringIO()):
            code = main(["fingerprint", *argv, "--texts", setup["texts"], "--n-networks", "6", "--tokenizer", "chars",
                         "--register", setup["registry"]])
        assert code == 0
        outs.append(buf.getvalue())
    return outs


def test_register_two_models(setup, registered):
    from tl_funcnet.fingerprint import FingerprintRegistry

    first = json.loads(registered[0])  # stdout holds only the JSON
    assert first["registered"] == "alpha-v1" and first["registry"] == setup["registry"] and first["n_registered"] == 1
    assert "registered as 'beta'" in registered[1] and "(2 entries)" in registered[1]
    reg = FingerprintRegistry(setup["registry"])
    assert reg.names == ["alpha-v1", "beta"]
    fp = reg.get("beta")
    assert fp.texts == tuple(TEXTS) and fp.n_networks == 6 and fp.params["tokenizer"] == "chars"
    assert fp.model["name"] == setup["models"]["beta"]


def test_rank_a_suspect_json_and_table(setup, registered, capsys):
    code, out, err = _run(capsys, "--suspect", setup["models"]["alpha"], "--registry", setup["registry"], "--json",
                          *RANK)
    assert code == 0, err
    data = json.loads(out)
    assert data["suspect"] == setup["models"]["alpha"] and data["best"] == "alpha-v1"
    rows = data["ranking"]
    assert [r["name"] for r in rows] == ["alpha-v1", "beta"] and [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["score"] == pytest.approx(1.0) and rows[0]["verdict"] == "derived"
    assert rows[1]["score"] < 0.6 and rows[1]["verdict"] != "derived"
    assert data["settings"]["top_m"] == 4 and data["settings"]["n_null"] == 100 and "ranking" in err

    code, out, err = _run(capsys, "--suspect", setup["models"]["beta"], "--registry", setup["registry"], *RANK)
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "name"])
    table = [line.split() for line in lines[header + 1:]]
    assert [row[:2] for row in table] == [["1", "beta"], ["2", "alpha-v1"]]
    assert float(table[0][2]) == pytest.approx(1.0) and table[0][4] == "derived"
    assert "p-value" in lines[header] and "verdict" in lines[header]


def test_register_again_needs_overwrite(setup, registered, capsys):
    from tl_funcnet.fingerprint import FingerprintRegistry

    before = FingerprintRegistry(setup["registry"]).entry("beta")
    code, out, err = _register(setup, capsys, "beta")
    assert code == 2 and out == "" and "already holds 'beta'; pass --overwrite" in err
    code, out, err = _register(setup, capsys, "beta", "--overwrite")
    assert code == 0, err
    assert FingerprintRegistry(setup["registry"]).entry("beta") == before  # the same fingerprint again


def test_workers_run_the_ranking_on_a_process_pool(setup, registered, capsys, monkeypatch):
    """--workers N asks for N spawned processes (threads stand in for them here: same numbers, no start-up)."""
    import concurrent.futures as cf

    asked = []

    def pool(n, mp_context=None):
        asked.append((n, mp_context.get_start_method()))
        return cf.ThreadPoolExecutor(n)

    argv = ["--suspect", setup["models"]["beta"], "--registry", setup["registry"], "--json", *RANK]
    code, here, err = _run(capsys, *argv)
    assert code == 0, err
    monkeypatch.setattr(cf, "ProcessPoolExecutor", pool)
    code, there, err = _run(capsys, *argv, "--workers", "2")
    assert code == 0, err
    assert asked == [(2, "spawn")] and json.loads(there) == json.loads(here)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_registries(setup, registered, tmp_path):
    """Copies of the registry with a corrupt index and with a changed entry file, a plain folder, a user file."""
    import shutil

    corrupt_index = tmp_path / "corrupt-index"
    shutil.copytree(setup["registry"], corrupt_index)
    (corrupt_index / "index.json").write_text("{not json")
    changed = tmp_path / "changed-entry"
    shutil.copytree(setup["registry"], changed)
    data = bytearray((changed / "beta.safetensors").read_bytes())
    data[-3] ^= 1
    (changed / "beta.safetensors").write_bytes(bytes(data))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "thesis.txt").write_text("three years of work")
    (tmp_path / "user.txt").write_text("not a registry")
    return tmp_path


def _cases(setup, t):
    a, reg = setup["models"]["alpha"], setup["registry"]
    victim = ["--victim", a, "--tokenizer", "chars", "--n-networks", "6", "--texts", setup["texts"]]
    return {
        "corrupt-index": (["--suspect", a, "--registry", str(t / "corrupt-index")],
                          f"{t / 'corrupt-index' / 'index.json'} is not valid JSON"),
        "changed-entry-file": (["--suspect", a, "--registry", str(t / "changed-entry")],
                               f"{t / 'changed-entry' / 'beta.safetensors'}: its SHA-256"),
        "missing-registry": (["--suspect", a, "--registry", str(t / "nowhere")],
                             "index.json is missing: there is no fingerprint registry"),
        "folder-not-registry": (["--suspect", a, "--registry", str(t / "plain")], "FingerprintRegistry.build"),
        "registry-without-suspect": (["--registry", reg], "pass --suspect MODEL"),
        "registry-with-victim": (["--suspect", a, "--victim", a, "--registry", reg], "--victim does not apply"),
        "registry-with-texts": (["--suspect", a, "--registry", reg, "--texts", setup["texts"]],
                                "--texts does not apply"),
        "registry-unknown-suspect": (["--suspect", "nosuch", "--registry", reg], "unknown model 'nosuch'"),
        "no-victim": (["--suspect", a], "pass --victim"),
        "name-without-register": ([*victim, "--save", str(t / "F.safetensors"), "--name", "x"],
                                  "--name names the victim in --register"),
        "workers-without-registry": ([*victim, "--suspect", a, "--workers", "2"], "apply to --registry and --register"),
        "workers-and-scheduler": (["--suspect", a, "--registry", reg, "--workers", "2", "--scheduler", "tcp://x:1"],
                                  "not allowed with argument"),
        "unsafe-name": ([*victim, "--register", str(t / "R"), "--name", "../x"], "not a safe file name"),
        "register-onto-file": ([*victim, "--register", str(t / "user.txt")], "a file is there"),
        "register-taken-name": ([*victim, "--register", reg, "--name", "beta"], "already holds 'beta'"),
        "register-unknown-victim": (["--victim", "nosuch", "--register", str(t / "R")], "unknown model 'nosuch'"),
    }


CASES = ["corrupt-index", "changed-entry-file", "missing-registry", "folder-not-registry", "registry-without-suspect",
         "registry-with-victim", "registry-with-texts", "registry-unknown-suspect", "no-victim",
         "name-without-register", "workers-without-registry", "workers-and-scheduler", "unsafe-name",
         "register-onto-file", "register-taken-name", "register-unknown-victim"]


def _files(*folders):
    return {str(p): p.read_bytes() for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_at_once_with_one_line(setup, bad_registries, no_model_loads, capsys, case):
    argv, message = _cases(setup, bad_registries)[case]
    before = _files(bad_registries, setup["registry"])
    code, out, err = _run(capsys, *argv)
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("tl-funcnet fingerprint: error: ") and message in lines[0], lines[0]
    assert no_model_loads == []
    assert _files(bad_registries, setup["registry"]) == before  # nothing written anywhere
    assert not (bad_registries / "R").exists()


def test_scheduler_without_dask_is_a_clear_error(setup, registered, no_model_loads, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    code, out, err = _run(capsys, "--suspect", setup["models"]["alpha"], "--registry", setup["registry"],
                          "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and out == "" and "--scheduler needs Dask's distributed package" in err
    assert no_model_loads == []
