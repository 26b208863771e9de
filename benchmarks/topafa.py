"""Top-AFA against top-k SAEs on one SmolLM2 site, with the quasi-orthogonality diagnostics of both.

Three SAEs at ``blocks.6.hook_resid_post`` (d_sae 2304, 150k calibration tokens, batch 2048, lr 1e-3: the
settings of ``benchmarks/sae.py``), trained with sae-lens's runner through ``train_sae``:

- ``topafa``: top-AFA (``architecture="topafa"``, no k) with the default norm-matching loss weight
  (``d_in / 128``: the paper's 1/128 on sae-lens's summed squared error);
- ``topafa_no_afa_loss``: the same without that loss;
- ``topk_32``: top-k at the project's default k;
- ``topk_<L0>``: top-k with k = the top-AFA SAE's mean L0 on the evaluation tokens (the control at equal
  sparsity: top-AFA's claim is reconstruction comparable to top-k without tuning k).

Each is scored on held-out evaluation passages with ``evaluate_sae`` (MSE, explained variance, CE loss
recovered, dead fraction, AFA ratio, ε_LBO, max decoder |cos|) plus the spread of the per-token L0 and its
correlation with the input norm ‖x - b_dec‖ (top-AFA's active count should grow with it).

    python benchmarks/topafa.py [--retrain] [--tokens 150000] [--eval-texts 24] [--quick]

Trained SAEs are kept in ``bench_out/topafa/<name>/`` and reused unless ``--retrain``. ``--quick``: a tiny
random model, a few hundred steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR, machine_info, markdown_table, peak_rss_mb, write_result  # noqa: E402
from sae import quick_model, sae_arguments  # noqa: E402
from tl_funcnet.sae.train import DEFAULTS  # noqa: E402

SITE = "blocks.6.hook_resid_post"
COLUMNS = ["sae", "k", "l0", "l0 p10", "l0 p90", "corr(l0, norm x)", "mse", "explained_variance", "ce_loss_recovered",
           "dead_fraction", "afa_ratio_mean", "afa_ratio_median", "afa_norm_corr", "eps_lbo", "max_decoder_cos",
           "train_s"]


def trained(model, folder: Path, site: str, texts, retrain: bool, **train_kw):
    """The SAE saved in ``folder`` or, if missing (or ``retrain``), a newly trained one saved there; and its
    training seconds (None when loaded)."""
    from tl_funcnet.sae import load_sae, save_sae, train_sae

    if not retrain and (folder / "cfg.json").is_file():
        return load_sae(folder), None
    t0 = time.perf_counter()
    sae = train_sae(model, site, texts, **train_kw)
    seconds = time.perf_counter() - t0
    save_sae(sae, folder, overwrite=True)  # our own benchmark folder, retrained on purpose
    return sae, seconds


def row(name: str, k, metrics, train_s) -> dict:
    l0 = metrics.token_l0.double()
    x = metrics.zf_x_norm.double()
    spread = l0.std() > 0
    corr = float(torch.corrcoef(torch.stack([l0, x]))[0, 1]) if spread else float("nan")
    d = metrics.to_dict()
    return {"sae": name, "k": k, "l0": d["l0"], "l0 p10": float(l0.quantile(0.1)), "l0 p90": float(l0.quantile(0.9)),
            "corr(l0, norm x)": corr, **{c: d[c] for c in COLUMNS if c in d and c != "l0"},
            "train_s": None if train_s is None else round(train_s, 1)}


def main(argv: list[str] | None = None) -> dict:
    args = sae_arguments(__doc__.split("\n")[0]).parse_args(argv)
    from tl_funcnet.sae import evaluate_sae

    t_start = time.perf_counter()
    if args.quick:
        model, texts = quick_model()
        site, eval_texts, k_default = "blocks.0.hook_resid_post", texts[:8], 4
        train_kw = dict(d_sae=32, training_tokens=4096, context_size=16, train_batch_size_tokens=128,
                        n_batches_in_buffer=16, lr=3e-3)
        root = OUT_DIR / "topafa_quick"
    else:
        from tl_funcnet.data import load_corpus
        from tl_funcnet.models import load

        model = load("smollm2-135m")
        texts, site, k_default = "calibration", SITE, DEFAULTS["k"]
        eval_texts = load_corpus("evaluation", limit=args.eval_texts)
        train_kw = dict(d_sae=DEFAULTS["d_sae"], training_tokens=args.tokens,
                        train_batch_size_tokens=DEFAULTS["train_batch_size_tokens"], lr=DEFAULTS["lr"])
        root = OUT_DIR / "topafa"

    def score(name: str, shown_k, **arch_kw) -> dict:
        sae, seconds = trained(model, root / name, site, texts, args.retrain, **train_kw, **arch_kw)
        m = evaluate_sae(model, sae, eval_texts, site=site, max_tokens_per_seq=128)
        print(f"{name}: L0 {m.l0:.1f}, explained variance {m.explained_variance:.3f}", flush=True)
        return row(name, shown_k, m, seconds)

    rows = [score("topafa", "-", architecture="topafa"),
            score("topafa_no_afa_loss", "-", architecture="topafa", afa_loss_coefficient=0.0)]
    k_matched = max(1, round(rows[0]["l0"]))
    rows.append(score(f"topk_{k_default}", k_default, architecture="topk", k=k_default))
    if k_matched != k_default:
        rows.append(score(f"topk_{k_matched}", k_matched, architecture="topk", k=k_matched))
    result = {"machine": machine_info(), "quick": args.quick, "site": site, "train_config": train_kw,
              "n_eval_texts": len(eval_texts), "k_matched": k_matched, "rows": rows,
              "total_s": round(time.perf_counter() - t_start, 1), "peak_rss_mb": round(peak_rss_mb())}
    path = write_result("topafa_quick" if args.quick else "topafa", result)
    print(f"\nsite {site}; top-k matched to top-AFA's mean L0: k = {k_matched}\n")
    print(markdown_table(rows, COLUMNS))
    print(f"\ntotal {result['total_s']} s, peak RSS {result['peak_rss_mb']} MB -> {path}")
    return result


if __name__ == "__main__":
    main()
