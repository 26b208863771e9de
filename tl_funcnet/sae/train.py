"""Offline SAE training with sae-lens's own runner, on an in-memory data set of token ids.

No hub access: the already-loaded model goes in through the runner's ``override_model`` and the corpus
through ``override_dataset`` (a ``datasets.Dataset`` with a ``tokens`` column of ``context_size`` ids).
Logging to wandb, checkpoints and the runner's own output directory are off; the result is an inference
``SAE`` (the trained SAE round-tripped through sae-lens's own save format).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .._io import Kind, atomic_dir
from .._rng import global_rng_preserved
from ..errors import FuncnetError
from ..hooks.sites import check_sites
from ..hooks.values import positive_int
from ._requires import require_sae_lens

#: The sites ``tl-funcnet train-sae`` trains by default on SmolLM2 (one residual, one MLP output).
DEFAULT_SITES = ("blocks.6.hook_resid_post", "blocks.6.hook_mlp_out")
#: Default SAE settings on SmolLM2, sized for a few minutes per SAE on 2 CPU cores.
DEFAULTS = {"d_sae": 2304, "k": 32, "training_tokens": 150_000, "train_batch_size_tokens": 2048, "lr": 1e-3}


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence sae-lens's own logger (restored after). Its warnings about override_model/override_dataset are
    left to the application: the library does not touch the process's warning filters (the CLI hides them)."""
    sl_logger = require_sae_lens("SAE training and loading").logger

    level = sl_logger.level
    if not verbose:
        sl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sl_logger.setLevel(level)


def token_dataset(model: Any, texts: Any, context_size: int, *, max_tokens: int | None = None) -> Any:
    """A ``datasets.Dataset`` with one ``tokens`` row per ``context_size`` ids of the concatenated texts.

    ``texts`` is a split name of the built-in corpus, a path, a list of strings, or token ids.
    """
    from datasets import Dataset

    from ..activations.tokens import tokenize

    seqs = tokenize(model, texts, max_tokens_per_seq=None)
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    parts = []
    for s in seqs:  # separate texts by EOS, as a document boundary the model knows
        parts.append(s)
        if eos is not None:
            parts.append(torch.tensor([eos]))
    ids = torch.cat(parts)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_rows = ids.numel() // context_size
    if n_rows < 1:
        raise FuncnetError(f"the corpus has {ids.numel()} tokens, fewer than one context of {context_size}; "
                           f"pass more text or a smaller context_size")
    rows = ids[: n_rows * context_size].view(n_rows, context_size)
    return Dataset.from_dict({"tokens": rows.tolist()})


def train_sae(model: Any, site: str, texts: Any = "calibration", *, d_sae: int | None = None,
              architecture: str = "topk", k: int = 32, l1_coefficient: float = 5.0,
              training_tokens: int = 200_000, context_size: int = 128, train_batch_size_tokens: int = 2048,
              store_batch_size_prompts: int = 8, n_batches_in_buffer: int = 32, lr: float = 1e-3,
              random_state: int = 0, device: str = "cpu", verbose: bool = False, **sae_kwargs: Any) -> Any:
    """Train a sae-lens SAE on ``model``'s activations at ``site`` and return it as an inference ``SAE``.

    Args:
        site: TransformerLens hook name, e.g. ``"blocks.6.hook_resid_post"``.
        texts: what :func:`token_dataset` accepts; cut into ``context_size`` rows (epochs repeat).
        d_sae: number of features (default 4 x the site width).
        architecture: a sae-lens training architecture (``"topk"``, ``"standard"``, ``"jumprelu"``,
            ``"batchtopk"``, ...) or ``"topafa"`` (top-AFA: as many active latents per token as match the
            input's norm, :mod:`tl_funcnet.sae.lens_topafa`; option ``afa_loss_coefficient``); ``k`` is used by
            top-k types, ``l1_coefficient`` by ``"standard"``.
        training_tokens, train_batch_size_tokens, lr, ...: passed to ``LanguageModelSAERunnerConfig``.
        sae_kwargs: extra fields of the architecture's ``TrainingSAEConfig`` (unknown names are refused).
        random_state: the training seed (sae-lens seeds the global generators from it; their states are
            restored afterwards).
    """
    require_sae_lens("train_sae")
    from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from ..hooks.sites import site_shape

    check_sites(model, [site])
    shape = site_shape(model, site)
    if shape is None or len(shape) != 1:
        raise FuncnetError(f"train_sae supports sites with a (batch, pos, d) activation; {site!r} has {shape}")
    d_in = shape[0]
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise FuncnetError(f"unknown sae-lens architecture {architecture!r}; known: {sorted(SAE_TRAINING_CLASS_REGISTRY)}")
    if n_batches_in_buffer * context_size < train_batch_size_tokens:
        raise FuncnetError(
            f"sae-lens's mixing buffer holds n_batches_in_buffer x context_size = {n_batches_in_buffer} x "
            f"{context_size} tokens, fewer than train_batch_size_tokens={train_batch_size_tokens}; raise "
            f"n_batches_in_buffer to at least {-(-train_batch_size_tokens // context_size)}"
        )
    cfg_cls = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    options = set(cfg_cls.__dataclass_fields__) - {"d_in", "d_sae", "device"}  # set from the site / parameters
    unknown = sorted(set(sae_kwargs) - options)
    if unknown:
        raise FuncnetError(f"{architecture} SAEs have no options {unknown} (d_in comes from the site; d_sae, "
                           f"random_state and device are train_sae parameters); known: {sorted(options)}")
    for name, value in (("d_sae", d_sae if d_sae is not None else 1), ("k", k), ("training_tokens", training_tokens),
                        ("context_size", context_size), ("train_batch_size_tokens", train_batch_size_tokens)):
        positive_int(value, name)
    extra = dict(sae_kwargs)
    if "k" in cfg_cls.__dataclass_fields__:
        extra.setdefault("k", k)
    if "l1_coefficient" in cfg_cls.__dataclass_fields__:
        extra.setdefault("l1_coefficient", l1_coefficient)
    sae_cfg = cfg_cls(d_in=d_in, d_sae=d_sae or 4 * d_in, device=device, **extra)
    dataset = token_dataset(model, texts, context_size)
    with _quiet(verbose), global_rng_preserved():  # sae-lens seeds torch, numpy and random globally from seed
        cfg = LanguageModelSAERunnerConfig(
            sae=sae_cfg, model_name=str(getattr(model.cfg, "model_name", "custom")), hook_name=site,
            dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=context_size,
            prepend_bos=False, sequence_separator_token=None, training_tokens=training_tokens,
            train_batch_size_tokens=train_batch_size_tokens, store_batch_size_prompts=store_batch_size_prompts,
            n_batches_in_buffer=n_batches_in_buffer, lr=lr, seed=int(random_state), device=device,
            logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
            n_checkpoints=0, verbose=verbose, n_batches_for_norm_estimate=10,
            dead_feature_window=max(1, training_tokens // train_batch_size_tokens // 2),
            feature_sampling_window=max(1, training_tokens // train_batch_size_tokens // 2),
        )
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
        was_training = model.training
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            trained = runner.run()
        finally:  # the runner installs its own SIGINT/SIGTERM handlers and leaves them in place
            model.train(was_training)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        with tempfile.TemporaryDirectory() as tmp:
            trained.save_inference_model(tmp)
            sae = SAE.load_from_disk(tmp, device=device)
    sae.cfg.metadata.hook_name = site
    return sae


def _is_sae_folder(path: Path) -> bool:
    return (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()


#: what sae-lens's ``save_model`` writes
KIND = Kind("SAE", entries=("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"), recognize=_is_sae_folder)


def save_sae(sae: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``sae`` in sae-lens's own format (``cfg.json`` + ``sae_weights.safetensors``), atomically; an SAE
    saved there before is replaced only with ``overwrite=True``."""
    with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
        sae.save_model(tmp)
    return Path(path)


def load_sae(path: str | os.PathLike[str], device: str = "cpu") -> Any:
    """Read an SAE written by :func:`save_sae` (or by sae-lens) with ``SAE.load_from_disk``."""
    SAE = require_sae_lens("load_sae").SAE

    root = Path(path)
    if not (root / "cfg.json").is_file():
        raise FuncnetError(f"{root} has no cfg.json; expected a directory written by sae.save_model()")
    with _quiet(False):
        return SAE.load_from_disk(root, device=device)


def train_and_save(model: Any, out_dir: str | os.PathLike[str], sites: Any, texts: Any = "calibration", *,
                   overwrite: bool = False, **train_options: Any) -> dict[str, float]:
    """Train one SAE per site and save each under ``out_dir/<site>``; returns ``{site: seconds}``.

    Every target folder is checked before the first SAE trains.
    """
    import time

    from .._io import check_target

    require_sae_lens("train_and_save")
    targets = {site: Path(out_dir) / site for site in sites}
    for target in targets.values():
        check_target(target, KIND, overwrite=overwrite)
    times = {}
    for site, target in targets.items():
        t0 = time.perf_counter()
        sae = train_sae(model, site, texts, **train_options)
        times[site] = time.perf_counter() - t0
        save_sae(sae, target, overwrite=overwrite)
    return times


__all__ = ["DEFAULT_SITES", "DEFAULTS", "train_sae", "train_and_save", "token_dataset", "save_sae", "load_sae"]
