"""Save a processed TransformerLens model to a directory and load it back without re-processing.

Layout of a saved directory::

    config.json        {"format": "tl_funcnet.model", "version": 1, "class": ..., "config": {...},
                        "d_mlp_per_layer": [...] (only when the widths differ from config.d_mlp),
                        "tokenizer": "tokenizer" | null}
    model.safetensors  the parameters (already processed: loading never folds or centres again)
    tokenizer/         the tokenizer's save_pretrained output, when the model has one

Buffers (causal masks, rotary tables) are not stored; the model rebuilds them from the config.

A ``TransformerBridge`` is saved as its Hugging Face config (``"class": "TransformerBridge"``, with its
compatibility mode) and the wrapped model's weights under Hugging Face names; loading boots the bridge again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._io import Kind, atomic_dir, field, read_json
from ..errors import FormatError, FuncnetError
from ..hooks.names import is_bridge
from .mlp import mlp_widths, resize_neurons, sync_config

FORMAT = "tl_funcnet.model"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
#: ``pruning.json``: what ``tl-funcnet prune`` writes beside the weights
KIND = Kind("model", CONFIG_FILE, FORMAT, (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR, "pruning.json"))


BRIDGE = "TransformerBridge"
CLASS_NAMES = ("HookedTransformer", "HookedEncoder", BRIDGE)


def _classes() -> dict[str, type]:
    try:
        from transformer_lens import HookedEncoder, HookedTransformer
    except ImportError:
        raise FuncnetError("this transformer-lens has no HookedTransformer or HookedEncoder (TransformerLens 4 "
                           "removed them); a saved TransformerBridge loads here, a saved HookedTransformer needs "
                           "transformer-lens<4") from None
    return {"HookedTransformer": HookedTransformer, "HookedEncoder": HookedEncoder}


def _class_name(model: Any) -> str:
    if is_bridge(model):
        return BRIDGE
    for name, cls in _classes().items():
        if isinstance(model, cls):
            return name
    raise FuncnetError(f"save() got a {type(model).__name__}; expected a HookedTransformer, HookedEncoder or "
                       f"TransformerBridge")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def save(model: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` (processed weights, config, tokenizer) to the folder ``path``, atomically.

    A model saved there before is replaced only with ``overwrite=True``; any other content is never touched.
    """
    from safetensors.torch import save_file

    class_name = _class_name(model)
    if class_name == BRIDGE:
        return _save_bridge(model, path, overwrite=overwrite)
    cfg = _jsonable(model.cfg.to_dict())
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "class": class_name, "config": cfg}
    widths = mlp_widths(model)
    if widths is not None and any(w != model.cfg.d_mlp for w in widths):
        header["d_mlp_per_layer"] = widths
    tokenizer = getattr(model, "tokenizer", None)
    header["tokenizer"] = TOKENIZER_DIR if tokenizer is not None else None
    try:
        text = json.dumps(header, indent=2) + "\n"
    except TypeError as e:
        raise FuncnetError(f"save(): the model config holds a value JSON cannot store ({e})") from None
    # clone: parameters may share storage, which safetensors refuses
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.named_parameters()}
    with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "tl_funcnet": FORMAT})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / CONFIG_FILE).write_text(text)
    return Path(path)


def _hf_state(model: Any) -> dict[str, torch.Tensor]:
    """The wrapped Hugging Face model's parameters under their own names (the bridge nests each module it wraps
    as ``_original_component``)."""
    return {k.replace("._original_component", ""): v.detach().to("cpu").clone().contiguous()
            for k, v in model.original_model.named_parameters()}


def _save_bridge(model: Any, path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """A TransformerBridge as its Hugging Face config and weights (processed in place when in compatibility
    mode; processing again on load changes nothing), the tokenizer, and how to boot it again."""
    from safetensors.torch import save_file

    hf_config = model.original_model.config.to_dict()
    hf_config.pop("quantization_config", None)  # the weights are saved dequantized
    hf = model.original_model
    out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    # compatibility mode centres the unembedding, which unties it from the embedding
    hf_config["tie_word_embeddings"] = bool(out_emb is not None and in_emb is not None and
                                            _unwrapped(out_emb).weight is _unwrapped(in_emb).weight)
    widths = mlp_widths(model)
    header: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "class": BRIDGE, "config": _jsonable(hf_config),
        "model_name": str(getattr(model.cfg, "model_name", "") or hf_config.get("_name_or_path") or "model"),
        "hf_class": type(hf).__name__,  # e.g. BertForMaskedLM: the auto class for causal LMs would not rebuild it
        "compatibility_mode": bool(getattr(model, "compatibility_mode", False)),
        "default_prepend_bos": bool(getattr(model.cfg, "default_prepend_bos", True)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "tokenizer": TOKENIZER_DIR if getattr(model, "tokenizer", None) is not None else None}
    if widths is not None and len(set(widths)) > 1 or widths and widths[0] != hf_config.get("intermediate_size"):
        header["d_mlp_per_layer"] = widths
    text = json.dumps(header, indent=2) + "\n"
    tensors = _hf_state(model)
    with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "tl_funcnet": FORMAT})
        if header["tokenizer"]:
            model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / CONFIG_FILE).write_text(text)
    return Path(path)


def _unwrapped(module: Any) -> Any:
    return getattr(module, "original_component", None) or module


def _fit_linears(hf: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Give every ``nn.Linear`` whose saved weight has another shape (a pruned MLP) that shape."""
    modules = dict(hf.named_modules())
    for key, value in tensors.items():
        owner, _, attr = key.rpartition(".")
        module = modules.get(owner)
        current = getattr(module, attr, None)
        if not isinstance(module, torch.nn.Linear) or attr not in ("weight", "bias"):
            continue
        if current is None or current.shape != value.shape:  # a pruned width, or a bias compat mode added
            setattr(module, attr, torch.nn.Parameter(torch.empty(value.shape, dtype=module.weight.dtype)))
            if attr == "weight":
                module.out_features, module.in_features = int(value.shape[0]), int(value.shape[1])


def _load_bridge(folder: Path, header: dict[str, Any], device: Any, dtype: Any) -> Any:
    from .._rng import global_rng_preserved

    with global_rng_preserved():  # from_config initialises weights from the global generator
        return _boot_saved_bridge(folder, header, device, dtype)


def _boot_saved_bridge(folder: Path, header: dict[str, Any], device: Any, dtype: Any) -> Any:
    import transformers

    from .bridge import require_bridge

    file = folder / CONFIG_FILE
    raw = dict(header["config"])
    dt = dtype if dtype is not None else getattr(torch, str(header.get("dtype", "float32")), torch.float32)
    try:
        config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
        hf_class = getattr(transformers, str(header.get("hf_class", "")), None)
        if isinstance(hf_class, type) and issubclass(hf_class, transformers.PreTrainedModel):
            hf = hf_class(config).to(dt)
        else:  # folders saved before the class was recorded held causal LMs
            hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dt)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{file}: the Hugging Face config does not describe a buildable model "
                          f"({type(e).__name__}: {e}); save the model again") from None
    tensors = _read_weights(folder / WEIGHTS_FILE)
    _fit_linears(hf, tensors)
    try:
        hf.load_state_dict({k: v.to(dt) for k, v in tensors.items()}, strict=False)
    except RuntimeError as e:
        raise FormatError(f"{folder / WEIGHTS_FILE} does not fit {file} ({e}); save the model again") from None
    params = set(hf.state_dict())
    missing, unexpected = sorted({k for k, _ in hf.named_parameters()} - set(tensors)), sorted(set(tensors) - params)
    if missing or unexpected:
        raise FormatError(f"{folder / WEIGHTS_FILE} does not fit {file} (missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}); the two files come from different saves, save the model again")
    tokenizer = _read_tokenizer(folder, header)
    bridge = require_bridge().boot_transformers(str(header.get("model_name") or "model"), hf_model=hf.eval(),
                                                tokenizer=tokenizer, device=device, dtype=dt)
    bridge.cfg.default_prepend_bos = bool(header.get("default_prepend_bos", True))
    if header.get("compatibility_mode"):
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge.eval()


def _read_tokenizer(folder: Path, header: dict[str, Any]) -> Any:
    if not header.get("tokenizer"):
        return None
    tok_dir = folder / str(header["tokenizer"])
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as e:  # tokenizers raises plain Exceptions on a corrupt tokenizer.json
        raise FormatError(f"{tok_dir}: cannot load the saved tokenizer ({type(e).__name__}: {e}); "
                          "save the model again") from None


def saved_class(path: str | os.PathLike[str]) -> str:
    """The model class a saved folder holds (its header checked)."""
    return str(_read_header(Path(path))["class"])


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` of this format."""
    return Path(path).is_dir() and KIND.holds(Path(path))


def _read_header(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_FILE
    what = "a folder written by tl_funcnet.models.save"
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder; expected {what}")
    header = read_json(file, what)
    if header.get("format") != FORMAT:
        raise FormatError(f"{file} has format {header.get('format')!r}; expected {FORMAT!r} ({what})")
    if header.get("version") != VERSION:
        raise FormatError(f"{file} has version {header.get('version')!r}; this tl_funcnet reads version "
                          f"{VERSION}; upgrade tl_funcnet or save the model again with this version")
    cls = field(header, "class", str, str(file))
    if cls not in CLASS_NAMES:
        raise FormatError(f"{file} names class {cls!r}; expected one of {list(CLASS_NAMES)}")
    field(header, "config", dict, str(file))
    tok = header.get("tokenizer")
    if tok is not None and not isinstance(tok, str):
        raise FormatError(f"{file}: 'tokenizer' should be a folder name or null, got {tok!r:.40}")
    widths = header.get("d_mlp_per_layer")
    if widths is not None and (not isinstance(widths, list) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
        raise FormatError(f"{file}: 'd_mlp_per_layer' should be a list of positive integers, got {widths!r:.60}")
    return header


def _build_config(file: Path, raw: dict[str, Any], device: str, dtype: torch.dtype | str | None) -> Any:
    from transformer_lens import HookedTransformerConfig

    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise FormatError(f"{file}: config has fields {unknown} that this TransformerLens does not know; "
                          "load it with the TransformerLens version that saved it")
    kw = dict(raw)
    saved_dtype = kw.get("dtype", "float32")
    dt = dtype if dtype is not None else saved_dtype
    if isinstance(dt, str):
        dt = getattr(torch, dt.removeprefix("torch."), None)
        if not isinstance(dt, torch.dtype):
            raise FormatError(f"{file}: dtype {saved_dtype!r} is not a torch dtype")
    kw.update(dtype=dt, device=str(device), init_weights=False, seed=None)
    try:
        cfg = HookedTransformerConfig(**kw)
    except (TypeError, ValueError, AssertionError, AttributeError, KeyError) as e:
        raise FormatError(f"{file}: the config is invalid ({type(e).__name__}: {e}); save the model again") from None
    return cfg


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise FormatError(f"{file} is missing; the saved model is incomplete, save it again")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError on a corrupt header or short file
        raise FormatError(f"{file} is corrupt or truncated ({type(e).__name__}: {e}); save the model again") from None


def _resize_mlps(model: Any, widths: list[int], file: Path) -> None:
    """Give block ``l``'s MLP width ``widths[l]`` (TransformerLens allocates cfg.d_mlp for every layer)."""
    if len(widths) != len(model.blocks):
        raise FormatError(f"{file}: d_mlp_per_layer has {len(widths)} entries for {len(model.blocks)} layers")
    for block, width in zip(model.blocks, widths):
        resize_neurons(block.mlp, width)
    sync_config(model)


def _check_weights(model: Any, tensors: dict[str, torch.Tensor], weights: Path, config: Path) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    bad = [f"{k}: weights {list(tensors[k].shape)}, config implies {list(p.shape)}"
           for k, p in params.items() if k in tensors and tensors[k].shape != p.shape]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if bad:
            parts.append("shape mismatch " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        raise FormatError(f"{weights} does not fit the model described by {config}: {', '.join(parts)}; "
                          "the two files come from different saves, save the model again")


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
         dtype: torch.dtype | str | None = None) -> Any:
    """Load a model written by :func:`save`; ``dtype=None`` keeps the saved dtype."""
    folder = Path(path)
    header = _read_header(folder)
    if header["class"] == BRIDGE:
        return _load_bridge(folder, header, device, dtype)
    config_file = folder / CONFIG_FILE
    cfg = _build_config(config_file, header["config"], str(device), dtype)
    tensors = _read_weights(folder / WEIGHTS_FILE)
    tokenizer = _read_tokenizer(folder, header)
    cls = _classes()[header["class"]]
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None  # never fetch a tokenizer by name
    try:
        model = cls(cfg, tokenizer, move_to_device=False)
    except (TypeError, ValueError, RuntimeError, AssertionError, AttributeError) as e:
        raise FormatError(f"{config_file}: the config does not describe a buildable model ({type(e).__name__}: "
                          f"{e}); save the model again") from None
    # restore what was switched off for construction: no hub lookup, no random init, no global reseed
    model.cfg.tokenizer_name = tokenizer_name
    model.cfg.init_weights = header["config"].get("init_weights", cfg.init_weights)
    model.cfg.seed = header["config"].get("seed")
    if tokenizer is not None:
        # TransformerLens may swap in a re-loaded "with BOS" variant; keep the tokenizer exactly as saved
        model.tokenizer = tokenizer
        saved_bos = header["config"].get("tokenizer_prepends_bos")
        if saved_bos is not None:  # None: the tokenizer was attached without set_tokenizer; keep TL's value
            model.cfg.tokenizer_prepends_bos = saved_bos
    widths = header.get("d_mlp_per_layer")
    if widths is not None:
        _resize_mlps(model, list(widths), config_file)
    _check_weights(model, tensors, folder / WEIGHTS_FILE, config_file)
    model.load_state_dict(tensors, strict=False)
    if torch.device(device).type != "cpu":
        model.to(device)
    model.eval()
    return model
