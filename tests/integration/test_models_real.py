"""The embedded real models against transformers' own loaders, plus a save/load round trip."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.models import load, locate, save

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat and looked out of the window at the birds in the garden.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, took off her coat and sat down by the fire to read a book.",
    "Children usually go to school in the morning and come home in the afternoon.",
    "The train to London leaves from platform four at half past nine every day.",
    "He likes to drink a cup of hot coffee with milk before he starts work.",
]


@pytest.fixture(scope="module")
def hf_smollm2():
    """The reference: transformers' own GGUF loader on the same file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = locate("smollm2-135m")
    kw = dict(gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), **kw)


def test_smollm2_config_from_gguf_metadata(smollm2):
    import gguf

    from tl_funcnet.models.smollm2 import DEFAULT_N_CTX, gguf_config

    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (30, 576, 9, 3)
    assert (cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (64, 1536, 49152)
    assert cfg.eps == pytest.approx(1e-5) and cfg.rotary_base == 100000 and cfg.rotary_dim == 64
    assert cfg.n_ctx == DEFAULT_N_CTX == 2048
    assert cfg.default_prepend_bos is False and cfg.normalization_type == "RMSPre"
    meta = gguf_config(gguf.GGUFReader(str(locate("smollm2-135m"))))
    assert meta["context_length"] == 8192 and meta["n_layers"] == 30


def test_smollm2_tokens_have_no_bos(smollm2, hf_smollm2):
    _, tok = hf_smollm2
    text = "The capital of France is"
    assert smollm2.to_tokens(text)[0].tolist() == tok(text)["input_ids"]
    assert smollm2.to_tokens(text)[0, 0].item() != 1


def test_smollm2_matches_transformers_gguf(smollm2, hf_smollm2):
    hf, _ = hf_smollm2
    for text in SENTENCES[:3]:
        tokens = smollm2.to_tokens(text)
        with torch.no_grad():
            ours = smollm2(tokens).log_softmax(-1)
            ref = hf(tokens).logits.log_softmax(-1)
        assert (ours - ref).abs().max().item() <= 1e-3, text
        assert torch.equal(ours.argmax(-1), ref.argmax(-1)), text


def test_smollm2_loss_on_plain_english(smollm2):
    with torch.no_grad():
        losses = [smollm2(smollm2.to_tokens(s), return_type="loss").item() for s in SENTENCES]
    mean = sum(losses) / len(losses)
    assert 1.0 < mean < 4.5, losses


def test_smollm2_greedy_paris(smollm2):
    out = smollm2.generate("The capital of France is", max_new_tokens=6, do_sample=False, verbose=False)
    assert out.startswith("The capital of France is")
    assert "Paris" in out[len("The capital of France is"):]


def test_smollm2_save_load_round_trip(smollm2, tmp_path):
    from tl_funcnet.errors import OverwriteError
    from tl_funcnet.models import resolve

    assert save(smollm2, tmp_path / "smol") == tmp_path / "smol"
    with pytest.raises(OverwriteError, match="overwrite=True"):  # refused before anything is written
        save(smollm2, tmp_path / "smol")
    assert resolve(tmp_path / "smol")[0] == "saved" and resolve("smollm2-135m")[0] == "embedded"
    back = load(tmp_path / "smol")
    assert back.cfg.to_dict() == smollm2.cfg.to_dict()
    text = SENTENCES[0]
    assert torch.equal(back.to_tokens(text), smollm2.to_tokens(text))
    tokens = smollm2.to_tokens(SENTENCES[:2], padding_side="right")
    with torch.no_grad():
        assert torch.equal(back(tokens), smollm2(tokens))


def test_minilm_matches_transformers_bert(minilm):
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(locate("minilm-l6")), local_files_only=True).eval()
    toks, types, mask = minilm.to_tokens(["A man is playing a guitar.", SENTENCES[1]])
    assert mask[0].sum() < mask[1].sum()  # the batch really is padded
    with torch.no_grad():
        ours = minilm.encoder_output(toks, types, mask)
        ref = hf(input_ids=toks, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        _, cache = minilm.run_with_cache(toks, token_type_ids=types, one_zero_attention_mask=mask,
                                         names_filter=lambda n: n.endswith("hook_normalized_resid_post"))
    valid = mask.bool()
    assert ours.shape == (2, toks.shape[1], 384)
    assert (ours - ref.last_hidden_state)[valid].abs().max().item() <= 1e-4
    assert len(cache) == 6  # one hook per layer fired
    assert torch.equal(cache["blocks.5.hook_normalized_resid_post"], ours)


def test_minilm_hooks_see_hidden_states(minilm):
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(locate("minilm-l6")), local_files_only=True).eval()
    toks, types, mask = minilm.to_tokens("Hooks see every layer.")
    with torch.no_grad():
        ref = hf(input_ids=toks, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        _, cache = minilm.run_with_cache(toks, token_type_ids=types, one_zero_attention_mask=mask)
    for layer in range(6):
        got = cache[f"blocks.{layer}.hook_normalized_resid_post"]
        assert (got - ref.hidden_states[layer + 1]).abs().max().item() <= 1e-4, layer


def test_minilm_save_load_round_trip(minilm, tmp_path):
    save(minilm, tmp_path / "mini")
    back = load(tmp_path / "mini")
    assert type(back).__name__ == "HookedEncoder"
    toks, types, mask = minilm.to_tokens(SENTENCES[:2])
    assert torch.equal(back.to_tokens(SENTENCES[:2])[0], toks)
    with torch.no_grad():
        assert torch.equal(back.encoder_output(toks, types, mask), minilm.encoder_output(toks, types, mask))
