"""SAE quality metrics on a corpus, including the quasi-orthogonality (AFA) diagnostics.

Definitions (all over the real, non-padding tokens of ``texts``; ``x`` is the activation at the site, flat
for ``hook_z``; ``x̂`` the SAE reconstruction without error term; ``f`` the feature activations):

- ``mse``: mean over tokens and dimensions of ``(x - x̂)²``.
- ``explained_variance``: ``1 - Σ_t ‖x_t - x̂_t‖² / Σ_t ‖x_t - x̄‖²`` with ``x̄`` the mean over all tokens
  (pooled; sae-lens averages a per-batch version instead).
- ``l0``: mean number of non-zero features per token (``token_l0``: per token, for a top-AFA SAE's
  input-dependent count). ``dead_fraction``: fraction of features that are
  never non-zero on these tokens.
- ``ce_loss_recovered``: ``(L_zero - L_sae) / (L_zero - L_base)`` where ``L`` is the mean next-token loss of
  the unmodified model (base), with the site replaced by ``x̂`` (sae), and with the site zeroed (zero).
- AFA (Lee et al., arXiv 2503.24277: ‖f‖₂ ≈ ‖x‖₂ when decoder atoms are quasi-orthogonal): with unit atoms
  ``u_i = d_i / ‖d_i‖`` and coefficients ``g_i`` such that ``x̂ - b_dec = Σ g_i u_i`` (``g_i = f_i ‖d_i‖``,
  or ``f_i`` for top-k / top-AFA SAEs with ``rescale_acts_by_decoder_norm``), the per-token ratio is
  ``‖g‖₂ / ‖x̃‖₂`` with ``x̃`` the normalized input minus ``b_dec`` (what ``Σ g_i u_i`` reconstructs; also
  the target of top-AFA's selection, so a top-AFA SAE stays below 1 only where all its positive
  coefficients together fall short).
  ``afa_ratio_mean``/``afa_ratio_median`` summarize it (1 is ideal; < 1 under-, > 1 over-activation: the
  ZF plot is ``zf_x_norm`` against ``zf_f_norm``) and ``afa_norm_corr`` is the Pearson r of the two norms.
- ``max_decoder_cos``: ``max_{i≠j} |cos(d_i, d_j)|`` over all decoder atoms: the smallest ε for which the
  atoms are ε-quasi-orthogonal.
- ``eps_lbo``: a data-driven lower bound on that ε. Since ``‖Σ g_i u_i‖² = ‖g‖₂² + Σ_{i≠j} g_i g_j cos_ij``,
  ``|‖x̂ - b_dec‖² - ‖g‖₂²| ≤ ε (‖g‖₁² - ‖g‖₂²)``, so each token with two or more active features gives
  ``ε ≥ |‖x̂ - b_dec‖² - ‖g‖₂²| / (‖g‖₁² - ‖g‖₂²)``; ``eps_lbo`` is the max over tokens. It never exceeds
  ``max_decoder_cos``. (The paper's exact ε_LBO formula was not available to us; this is our derivation.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..activations.forward import run_batches
from ..activations.tokens import tokenize
from ..errors import FuncnetError
from ..evaluate import next_token_logprobs, next_token_nll, target_mask
from ..hooks import ablate, capture
from .builders import _site, splice
from .params import Normalizer, afa_target, decode, encode, sae_input, sae_params, unit_coefficients


@dataclass
class SAEMetrics:
    """Quality of one SAE on a corpus (see the module docstring for exact definitions)."""

    site: str
    n_tokens: int
    d_sae: int
    mse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    afa_ratio_mean: float
    afa_ratio_median: float
    afa_norm_corr: float
    eps_lbo: float
    max_decoder_cos: float
    ce_loss_base: float | None = None
    ce_loss_sae: float | None = None
    ce_loss_zero: float | None = None
    ce_loss_recovered: float | None = None
    zf_x_norm: Tensor | None = field(default=None, repr=False)
    zf_f_norm: Tensor | None = field(default=None, repr=False)
    token_l0: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (the per-token tensors are left out)."""
        d = asdict(self)
        for name in ("zf_x_norm", "zf_f_norm", "token_l0"):
            d.pop(name)
        return d


def max_decoder_cos(W_dec: Float[Tensor, "d_sae d_in"], *, chunk: int = 2048) -> float:
    """``max_{i≠j} |cos(W_dec[i], W_dec[j])|`` computed in chunks (no d_sae² matrix at once)."""
    U = F.normalize(W_dec.detach().float(), dim=-1)
    best = 0.0
    for start in range(0, U.shape[0], chunk):
        c = (U[start:start + chunk] @ U.T).abs()
        rows = torch.arange(c.shape[0])
        c[rows, rows + start] = 0.0
        best = max(best, float(c.max()))
    return best


def token_afa(p: dict[str, Any], x: Float[Tensor, "n d_in"]) -> dict[str, Tensor]:
    """Per-token AFA quantities: ``x_norm`` (‖x̃‖₂), ``f_norm`` (‖g‖₂) and ``eps`` (NaN with < 2 active)."""
    kind = p.get("normalize_activations", "none")
    s = sae_input(p, x, Normalizer(kind, x.shape[-1]))
    f = encode(p, x, Normalizer(kind, x.shape[-1]))
    W_dec = p["W_dec"].to(f)
    norms = W_dec.norm(dim=-1)
    g = unit_coefficients(p, f)
    recon_c = (g / norms) @ W_dec  # x̂ - b_dec before un-normalizing
    g2 = (g * g).sum(-1)
    denom = g.abs().sum(-1) ** 2 - g2
    eps = torch.where(denom > 1e-6 * g2.clamp_min(1e-12), ((recon_c * recon_c).sum(-1) - g2).abs() / denom,
                      torch.full_like(g2, float("nan")))
    return {"x_norm": afa_target(p, s), "f_norm": g2.sqrt(), "eps": eps}


@torch.no_grad()
def evaluate_sae(model: Any, sae: Any, texts: Any, *, site: str | None = None, batch_size: int = 8,
                 max_tokens_per_seq: int | None = 128, compute_ce: bool = True) -> SAEMetrics:
    """Reconstruction, sparsity, CE-loss-recovered and AFA metrics of ``sae`` at ``site`` over ``texts``."""
    p = sae_params(sae)
    site = _site(p, site)
    seqs = tokenize(model, texts, max_tokens_per_seq=max_tokens_per_seq)
    store: dict[str, Any] = {}
    read = capture(site, store)
    splice_iv, zero_iv = splice(p, site=site), ablate(site)
    for iv in (read, splice_iv, zero_iv):
        iv.validate(model)
    d_sae = int(p["W_enc"].shape[1])
    n = 0
    sse = sum_sq = 0.0
    sum_x = None
    l0_tokens = []
    ever = torch.zeros(d_sae, dtype=torch.bool)
    x_norms, f_norms, eps_all = [], [], []
    loss = {"base": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    for batch, logits in run_batches(model, seqs, batch_size=batch_size, intervention=read):
        toks = batch.tokens.to(logits.device)
        mask = batch.mask.bool().to(logits.device)
        act = store.pop(site)
        x = (act.flatten(-2) if act.ndim == 4 else act)[mask].float()
        norm = Normalizer(p.get("normalize_activations", "none"), x.shape[-1])
        f = encode(p, x, norm)
        x_hat = decode(p, f, norm)
        sse += float(((x - x_hat) ** 2).sum())
        sum_sq += float((x.double() ** 2).sum())
        sum_x = x.double().sum(0) if sum_x is None else sum_x + x.double().sum(0)
        l0_tokens.append((f != 0).sum(-1).cpu())
        ever |= (f != 0).any(0).cpu()
        afa = token_afa(p, x)
        x_norms.append(afa["x_norm"].cpu())
        f_norms.append(afa["f_norm"].cpu())
        eps_all.append(afa["eps"].cpu())
        n += x.shape[0]
        if compute_ce:
            tgt_mask = target_mask(mask)
            n_pred += int(tgt_mask.sum())
            loss["base"] += _nll_sum(logits, toks, tgt_mask)
            for name, iv in (("sae", splice_iv), ("zero", zero_iv)):
                with iv.applied(model):
                    loss[name] += _nll_sum(model(toks), toks, tgt_mask)
    if n == 0:
        raise FuncnetError("no tokens to evaluate on; pass non-empty texts")
    d_in = int(p["W_enc"].shape[0])
    total_var = sum_sq - float((sum_x * sum_x).sum()) / n
    xn, fn, eps, l0 = torch.cat(x_norms), torch.cat(f_norms), torch.cat(eps_all), torch.cat(l0_tokens)
    ok = xn > 0
    ratio = fn[ok] / xn[ok]
    corr = float(torch.corrcoef(torch.stack([xn, fn]))[0, 1]) if n > 1 else float("nan")
    eps_valid = eps[~torch.isnan(eps)]
    out = SAEMetrics(
        site=site, n_tokens=n, d_sae=d_sae, mse=sse / (n * d_in),
        explained_variance=1.0 - sse / total_var if total_var > 0 else float("nan"),
        l0=float(l0.double().mean()), dead_fraction=float((~ever).float().mean()),
        afa_ratio_mean=float(ratio.mean()) if ratio.numel() else float("nan"),
        afa_ratio_median=float(ratio.median()) if ratio.numel() else float("nan"),
        afa_norm_corr=corr if math.isfinite(corr) else float("nan"),
        eps_lbo=float(eps_valid.max()) if eps_valid.numel() else float("nan"),
        max_decoder_cos=max_decoder_cos(p["W_dec"]), zf_x_norm=xn, zf_f_norm=fn, token_l0=l0,
    )
    if compute_ce and n_pred:
        out.ce_loss_base, out.ce_loss_sae, out.ce_loss_zero = (loss[k] / n_pred for k in ("base", "sae", "zero"))
        gap = out.ce_loss_zero - out.ce_loss_base
        out.ce_loss_recovered = (out.ce_loss_zero - out.ce_loss_sae) / gap if abs(gap) > 1e-12 else float("nan")
    return out


def _nll_sum(logits: Tensor, toks: Tensor, tgt_mask: Tensor) -> float:
    return float(next_token_nll(next_token_logprobs(logits), toks)[tgt_mask].sum())


__all__ = ["SAEMetrics", "evaluate_sae", "max_decoder_cos", "token_afa"]
