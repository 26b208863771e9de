"""Top-AFA SAEs as a sae-lens architecture (``"topafa"``), for training with sae-lens's runner and loading.

Importing this module imports sae-lens; :func:`register_top_afa` adds the architecture to sae-lens's inference
and training registries (its plug-in mechanism; nothing else in sae-lens changes). tl_funcnet calls it
whenever it uses sae-lens (:func:`~tl_funcnet.sae.require_sae_lens`), so ``train_sae(..., architecture=
"topafa")`` and ``load_sae`` work; code that loads a saved top-AFA SAE with sae-lens alone calls it first.

The classes extend sae-lens's top-k SAE (same encoder, decoder, dead-latent auxiliary loss and decoder-norm
handling); only the activation differs: ReLU, then :func:`~tl_funcnet.sae.topafa.top_afa` against the
norm of the input minus ``b_dec``. Training adds the paper's norm-matching loss
``afa_loss_coefficient * mean((‖g‖₂ - ‖x - b_dec‖₂)²)``. Its default, ``d_in / 128``, is the paper's smallest
reported weight (1/128, the sparsest of its top-AFA runs) rescaled to sae-lens's squared error, which sums over
the ``d_in`` dimensions where the paper's averaged. Without it (``afa_loss_coefficient=0``) a top-AFA SAE
stayed dense on SmolLM2 (most latents active; BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, register_sae_class, \
    register_sae_training_class
from sae_lens.saes.sae import SAE, SAEConfig, TrainingSAEConfig, TrainStepInput
from sae_lens.saes.topk_sae import TopKSAE, TopKTrainingSAE
from torch import Tensor, nn

from ..errors import FuncnetError
from ..hooks.values import finite_number
from .params import afa_target
from .topafa import top_afa

ARCHITECTURE = "topafa"


def _unit_coefficients(sae: Any, acts: Tensor) -> Tensor:
    """``acts`` as coefficients of unit decoder atoms (they already are with ``rescale_acts_by_decoder_norm``)."""
    return acts if sae.cfg.rescale_acts_by_decoder_norm else acts * sae.W_dec.norm(dim=-1)


def _target(sae: Any, sae_in: Tensor) -> Tensor:
    """The AFA target ‖normalized x - b_dec‖ from the encoder input ``sae_in``."""
    return afa_target({"apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input, "b_dec": sae.b_dec}, sae_in)


def _encode_top_afa(sae: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Feature activations and (decoder-norm-scaled) pre-activations of a top-AFA ``sae`` for input ``x``."""
    sae_in = sae.process_sae_in(x)
    hidden_pre = sae.hook_sae_acts_pre(sae_in @ sae.W_enc + sae.b_enc)
    if sae.cfg.rescale_acts_by_decoder_norm:
        hidden_pre = hidden_pre * sae.W_dec.norm(dim=-1)
    acts = sae.activation_fn(hidden_pre)
    keep = top_afa(_unit_coefficients(sae, acts), _target(sae, sae_in))
    return sae.hook_sae_acts_post(acts * keep.to(acts.dtype)), hidden_pre


@dataclass
class TopAFASAEConfig(SAEConfig):
    """Inference config of a top-AFA SAE (``rescale_acts_by_decoder_norm`` as for sae-lens's top-k SAE)."""

    rescale_acts_by_decoder_norm: bool = False

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TopAFASAE(TopKSAE):
    """An inference top-AFA SAE: top-k's SAE with a per-token number of active latents."""

    def encode(self, x: Tensor) -> Tensor:
        return _encode_top_afa(self, x)[0]

    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        return nn.ReLU()

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Safe for either setting: the active set depends on ``f_i ‖d_i‖``, which folding leaves unchanged."""
        SAE.fold_W_dec_norm(self)


@dataclass
class TopAFATrainingSAEConfig(TrainingSAEConfig):
    """Training config: top-k's dead-latent auxiliary loss and decoder-norm rescaling, plus the AFA loss."""

    aux_loss_coefficient: float = 1.0
    afa_loss_coefficient: float | None = None  # None: d_in / 128
    rescale_acts_by_decoder_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.afa_loss_coefficient is None:
            self.afa_loss_coefficient = self.d_in / 128
        for name in ("aux_loss_coefficient", "afa_loss_coefficient"):
            if finite_number(getattr(self, name), name) < 0:
                raise FuncnetError(f"{name} should be >= 0 (a loss weight), got {getattr(self, name)}")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TopAFATrainingSAE(TopKTrainingSAE):
    """A trainable top-AFA SAE for sae-lens's runner."""

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _encode_top_afa(self, x)

    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        return nn.ReLU()

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        SAE.fold_W_dec_norm(self)

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor,
                           sae_out: Tensor) -> dict[str, Tensor]:
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        if self.cfg.afa_loss_coefficient:
            target = _target(self, self.process_sae_in(step_input.sae_in))
            gap = _unit_coefficients(self, feature_acts).norm(dim=-1) - target
            losses["afa_loss"] = self.cfg.afa_loss_coefficient * (gap * gap).mean()
        return losses


def register_top_afa() -> None:
    """Add ``"topafa"`` to sae-lens's inference and training registries (once; later calls do nothing)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, TopAFASAE, TopAFASAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, TopAFATrainingSAE, TopAFATrainingSAEConfig)


__all__ = ["ARCHITECTURE", "TopAFASAE", "TopAFASAEConfig", "TopAFATrainingSAE", "TopAFATrainingSAEConfig",
           "register_top_afa"]
