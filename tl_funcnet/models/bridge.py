"""TransformerLens's ``TransformerBridge``: the Hugging Face model wrapped with TransformerLens hook points.

The embedded SmolLM2 boots offline (transformers reads the GGUF into a ``LlamaForCausalLM``); any other
Hugging Face / TransformerLens name boots from the hub. ``compatibility=True`` applies HookedTransformer's
weight processing (``enable_compatibility_mode``), so activations match a ``HookedTransformer``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._rng import global_rng_preserved
from ..errors import FuncnetError

#: Hugging Face names of the embedded models, as the bridge's architecture adapters know them.
HF_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}

#: What ``load(..., backend="bridge")`` accepts besides device and dtype.
OPTIONS = ("compatibility", "n_ctx", "device_map", "n_devices", "max_memory")


def require_bridge() -> Any:
    """The ``TransformerBridge`` class, or a FuncnetError saying which TransformerLens has one."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:  # pragma: no cover - TransformerLens < 3
        raise FuncnetError(f"backend='bridge' needs transformer-lens >= 3 (TransformerBridge); import failed: "
                           f"{err}. pip install 'transformer-lens>=3'") from None
    return TransformerBridge


def compatibility_mode(model: Any) -> bool | None:
    """Whether a bridge runs with HookedTransformer's weight processing; ``None`` for other models."""
    from ..hooks.names import is_bridge

    return bool(getattr(model, "compatibility_mode", False)) if is_bridge(model) else None


def _check(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise FuncnetError(f"load(..., backend='bridge') got unexpected keyword(s) {unknown}; expected device, "
                           f"dtype or {list(OPTIONS)}")
    mode = options.get("compatibility", True)
    if not isinstance(mode, bool):
        raise FuncnetError(f"compatibility should be True or False, got {mode!r}")


def _minilm_hf(dtype: torch.dtype) -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 as a ``BertForMaskedLM``: the wheel's bare encoder, with the placeholder MLM head the
    HookedEncoder gets too (identity transform, unembedding tied to the embedding, zero biases), so the
    model's MLM logits are meaningless; use hooks."""
    import transformers
    from safetensors.torch import load_file

    from ._embedded import locate

    folder = locate("minilm-l6")
    config = transformers.BertConfig.from_pretrained(str(folder), local_files_only=True)
    hf = transformers.BertForMaskedLM(config)  # the caller's generators are restored by load_bridge
    encoder = {f"bert.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()
               if not k.startswith("pooler.") and not k.endswith("position_ids")}
    missing, unexpected = hf.load_state_dict(encoder, strict=False)
    if unexpected or any(not k.startswith("cls.") for k in missing):
        raise FuncnetError(f"{folder / 'model.safetensors'} does not fit BertForMaskedLM "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        head = hf.cls.predictions
        head.transform.dense.weight.copy_(torch.eye(config.hidden_size))
        head.transform.dense.bias.zero_()
        head.transform.LayerNorm.weight.fill_(1.0)
        head.transform.LayerNorm.bias.zero_()
        head.bias.zero_()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return hf.to(dtype).eval(), tok


def _embedded_hf(key: str, device: Any, dtype: torch.dtype, device_map: Any, max_memory: Any) -> tuple[Any, Any]:
    import transformers

    from ._embedded import locate
    from .smollm2 import gguf_tokenizer

    if key == "minilm-l6":
        hf, tok = _minilm_hf(dtype)
        return (hf if device_map is not None else hf.to(device)), tok
    path = locate(key)
    kw: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if device_map is not None:
        kw["device_map"] = device_map
        if max_memory is not None:
            kw["max_memory"] = max_memory
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kw)
    if device_map is None:
        hf = hf.to(device)
    return hf.eval(), gguf_tokenizer(path)


def load_bridge(kind: str, what: str, *, device: Any = "cpu", dtype: torch.dtype = torch.float32,
                **options: Any) -> Any:
    """Boot a ``TransformerBridge`` for an embedded model (offline) or a hub name.

    Options: ``compatibility`` (default True), ``n_ctx``, and Hugging Face's dispatcher arguments
    ``device_map`` / ``n_devices`` / ``max_memory`` for models larger than one device.
    """
    _check(options)
    with global_rng_preserved():  # building and booting may draw from the global generators
        return _load_bridge(kind, what, device=device, dtype=dtype, **options)


def _load_bridge(kind: str, what: str, *, device: Any, dtype: torch.dtype, **options: Any) -> Any:
    bridge_cls = require_bridge()
    compat = options.get("compatibility", True)
    device_map, max_memory = options.get("device_map"), options.get("max_memory")
    kw: dict[str, Any] = {"dtype": dtype}
    if options.get("n_ctx") is not None:
        kw["n_ctx"] = int(options["n_ctx"])
    if kind == "embedded":
        if options.get("n_devices") is not None:
            raise FuncnetError("n_devices applies to hub models; for the embedded model pass device_map")
        hf, tok = _embedded_hf(what, device, dtype, device_map, max_memory)
        model = bridge_cls.boot_transformers(HF_NAMES[what], hf_model=hf, tokenizer=tok,
                                             device=None if device_map is not None else device, **kw)
        if what == "smollm2-135m":
            model.cfg.default_prepend_bos = False  # as the embedded HookedTransformer: SmolLM2 uses no BOS
    elif kind == "hub":
        for key in ("device_map", "n_devices", "max_memory"):
            if options.get(key) is not None:
                kw[key] = options[key]
        try:
            model = bridge_cls.boot_transformers(what, device=None if device_map is not None else device, **kw)
        except (OSError, ValueError, KeyError) as err:  # no hub, no such repository, unsupported architecture
            import difflib

            from ._embedded import ALIASES

            close = difflib.get_close_matches(what.lower(), list(ALIASES), n=3, cutoff=0.6)
            raise FuncnetError(
                f"could not boot {what!r} as a TransformerBridge from the Hugging Face hub "
                f"{f'(did you mean {close}?) ' if close else ''}"
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Expected an embedded "
                f"model {sorted(HF_NAMES)} (offline) or a Hugging Face model id reachable from here") from None
    else:
        raise FuncnetError(f"{what} is a saved HookedTransformer folder; backend='bridge' boots embedded or hub "
                           f"models. Load it with backend='hooked'")
    if compat:
        model.enable_compatibility_mode(disable_warnings=True)
    model.eval()
    return model


def describe(model: Any) -> dict[str, Any]:
    """The model class facts a saved artifact records: class name, compatibility mode, TransformerLens version."""
    from ..hooks.names import transformer_lens_version

    return {"model_class": type(model).__name__, "compatibility_mode": compatibility_mode(model),
            "transformer_lens": transformer_lens_version()}


__all__ = ["load_bridge", "compatibility_mode", "describe", "require_bridge", "HF_NAMES", "OPTIONS"]
