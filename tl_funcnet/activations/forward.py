"""The one batched forward loop: texts to padded batches, each run under an intervention, padding masked.

Evaluation, steering metrics, SAE metrics, pruning statistics and collection all read a corpus the same way;
they call :func:`run_batches` and look only at real tokens (``batch.mask``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention
from .tokens import TokenBatch, batches, pad_id

IvSpec = Intervention | Callable[[TokenBatch], Intervention] | None


def model_device(model: Any) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free model)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def is_encoder(model: Any) -> bool:
    """A bidirectional encoder (HookedEncoder, or a bridge around a model that cannot generate, e.g. BERT;
    the bridge's config says ``causal`` for those too)."""
    if getattr(getattr(model, "cfg", None), "attention_dir", "causal") == "bidirectional":
        return True
    can_generate = getattr(getattr(model, "original_model", None), "can_generate", None)
    return callable(can_generate) and not can_generate()


def forward(model: Any, batch: TokenBatch, **kwargs: Any) -> Any:
    """One forward of a right-padded batch (tokens on the model's device; encoders get the attention mask)."""
    if is_encoder(model):
        kwargs.setdefault("one_zero_attention_mask", batch.mask.to(model_device(model)))
        kwargs.pop("return_type", None)
        kwargs.pop("stop_at_layer", None)
    return model(batch.tokens.to(model_device(model)), **kwargs)


def run_batches(model: Any, seqs: Sequence[Tensor], *, batch_size: int = 8, intervention: IvSpec = None,
                progress: str | None = None, **forward_kwargs: Any) -> Iterator[tuple[TokenBatch, Any]]:
    """Yield ``(batch, output)`` for right-padded batches of ``seqs``, each forward under ``intervention``.

    ``intervention`` is one Intervention (validated once) or a function of the batch that returns one (e.g. to
    act at each row's last real token). ``forward_kwargs`` go to the model (``return_type``, ``stop_at_layer``).
    ``progress`` names a tqdm bar (``None``: no bar). Batches come longest first; ``batch.index`` gives each
    row's position in ``seqs``.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FuncnetError(f"batch_size should be a positive int, got {batch_size!r}")
    fixed = intervention if isinstance(intervention, Intervention) else None
    if fixed is not None:
        fixed.validate(model)
    elif intervention is not None and not callable(intervention):
        raise FuncnetError(f"intervention should be an Intervention, a function of the batch, or None; got "
                           f"{type(intervention).__name__}")
    bar = tqdm(total=len(seqs), desc=progress or "", unit="seq", disable=progress is None, leave=False)
    try:
        for batch in batches(seqs, batch_size, pad_id=pad_id(model)):
            iv = fixed if fixed is not None or intervention is None else intervention(batch)
            with (iv or Intervention()).applied(model):
                out = forward(model, batch, **forward_kwargs)
            yield batch, out
            bar.update(len(batch.index))
    finally:
        bar.close()


__all__ = ["run_batches", "forward", "model_device", "is_encoder", "IvSpec"]
