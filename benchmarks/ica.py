"""ICA benchmark: tl_funcnet FastICA/CanICA against scikit-learn and nilearn on a real-shaped matrix.

    python benchmarks/ica.py --source smollm2      # real SmolLM2 mlp.hook_post, 2048 tokens x 46080
    python benchmarks/ica.py --source synthetic    # heavy-tailed planted sparse sources, same shape
    python benchmarks/ica.py --quick               # small sizes, for CI smoke runs

Each implementation runs in its own subprocess (fresh peak RSS: ``ru_maxrss`` of that process, which
includes the loaded float32 data). Sources/maps are compared by Hungarian-matched |corr|. Results go to
``bench_out/ica.json``; the printed tables hold every figure the "ICA engine" section of BENCHMARKS.md
quotes: per implementation its time, memory and |r| against its reference, and the speed ratios of ours
against scikit-learn (float64 and float32), nilearn and the scikit-learn CanICA composition.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR, machine_info, markdown_table, peak_rss_mb, run_worker, timer  # noqa: E402
from _bench import write_result as write_json  # noqa: E402

K = 64


# --------------------------------------------------------------------------- data
def synthetic(n: int, f: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed activations: k planted sparse sources with sparse loadings, a decaying low-rank
    Gaussian background and heavy-tailed noise. Returns (X float32 (n, f), sources (n, k))."""
    import torch

    g = torch.Generator().manual_seed(seed)
    S = (torch.rand(n, k, generator=g) < 0.05).float() * torch.empty(n, k).exponential_(generator=g)
    S = S * torch.linspace(3.0, 1.0, k)
    A = torch.randn(k, f, generator=g) * (torch.rand(k, f, generator=g) < 0.1)
    r = min(200, n)
    X = (torch.randn(n, r, generator=g) * torch.logspace(0, -1.5, r)) @ (torch.randn(r, f, generator=g) * 0.1)
    X += S @ A
    noise = torch.randn(n, f, generator=g)
    noise *= torch.rand(n, f, generator=g).pow_(-0.25)  # heavier than Gaussian tails
    X += 0.05 * noise
    X[:, :8] *= 5.0  # a few outlier neurons
    return X.numpy(), S.numpy()


def smollm2(n_tokens: int, ctx: int = 128) -> np.ndarray:
    """mlp.hook_post of every layer for ``n_tokens`` calibration tokens: (n_tokens, n_layers * d_mlp)."""
    import torch

    from tl_funcnet.data import load_corpus
    from tl_funcnet.models import load

    model = load("smollm2-135m")
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]
    rows: list[np.ndarray] = []
    total = 0
    texts = load_corpus("calibration")
    with torch.no_grad():
        for start in range(0, len(texts), 8):
            toks = [model.to_tokens(t, prepend_bos=False)[0, :ctx] for t in texts[start : start + 8]]
            for tok in toks:
                _, cache = model.run_with_cache(tok[None], names_filter=lambda name: name in names)
                acts = torch.cat([cache[name][0] for name in names], dim=-1)  # (pos, n_layers*d_mlp)
                rows.append(acts.float().numpy())
                total += acts.shape[0]
                if total >= n_tokens:
                    return np.ascontiguousarray(np.concatenate(rows)[:n_tokens])
    raise RuntimeError(f"calibration corpus gave only {total} tokens; need {n_tokens}")


# --------------------------------------------------------------------------- workers (subprocess)
def _canica_reference(X: np.ndarray, k: int, n_restarts: int, seed: int) -> np.ndarray:
    """The straightforward composition: z-score, sklearn randomized_svd, sklearn fastica x n_restarts."""
    from sklearn.decomposition import fastica
    from sklearn.utils.extmath import randomized_svd

    Xs = (X - X.mean(0)) / np.where((sd := X.std(0, ddof=1)) < 1e-8, 1.0, sd)
    U, _, _ = randomized_svd(Xs.T, k, n_iter=5, random_state=seed)
    U = U.astype(np.float64)  # as nilearn does: sklearn fastica (cube) in float32 hits NaN here
    rs = np.random.RandomState(seed)
    best, best_sp = None, np.inf
    for sd_ in rs.randint(np.iinfo(np.int32).max, size=n_restarts):
        _, _, S = fastica(U, whiten="unit-variance", fun="cube", max_iter=300, tol=1e-4, random_state=int(sd_))
        maps = S.T
        sp = np.abs(maps).sum(1).max()
        if sp < best_sp:
            best, best_sp = maps, sp
    z = (best - best.mean(1, keepdims=True)) / best.std(1, ddof=1, keepdims=True)
    z *= np.sign(z[np.arange(len(z)), np.abs(z).argmax(1)])[:, None]
    return z


def _canica_nilearn(X: np.ndarray, k: int, n_restarts: int, seed: int) -> np.ndarray:
    """nilearn CanICA on the activations dressed as a 4-D image (features as voxels, tokens as time)."""
    import nibabel as nib
    from nilearn.decomposition import CanICA as NlCanICA

    n, f = X.shape
    img = nib.Nifti1Image(np.ascontiguousarray(X.T).reshape(f, 1, 1, n), np.eye(4))
    mask = nib.Nifti1Image(np.ones((f, 1, 1), dtype=np.uint8), np.eye(4))
    est = NlCanICA(
        mask=mask, n_components=k, n_init=n_restarts, random_state=seed, smoothing_fwhm=None,
        detrend=False, threshold=None, do_cca=False, standardize=True, memory_level=0, verbose=0,
    )
    est.fit(img)
    return np.asarray(est.components_)


def worker(name: str, data: str, out: str, k: int, n_restarts: int) -> None:
    X = np.load(data)
    base = peak_rss_mb()
    extra: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "ours_fastica":
            from tl_funcnet.funcnet.ica import FastICA

            est = FastICA(k, random_state=0, dtype="float32")
            with timer() as t:
                res = est.fit_transform(X)
            extra = {"n_iter": est.n_iter_, "converged": est.converged_, "solver": est.whiten_solver_}
        elif name in ("sklearn_fastica32", "sklearn_fastica64"):
            from sklearn.decomposition import FastICA as SkFastICA

            Xd = X if name.endswith("32") else X.astype(np.float64)
            est = SkFastICA(k, random_state=0, whiten="unit-variance", whiten_solver="svd", fun="logcosh")
            with timer() as t:
                res = est.fit_transform(Xd)
            extra = {"n_iter": int(est.n_iter_)}
        elif name == "ours_canica":
            from tl_funcnet.funcnet.ica import CanICA

            est = CanICA(k, n_restarts=n_restarts, random_state=0, dtype="float32")
            with timer() as t:
                est.fit(X)
            res = est.maps_
            extra = {"n_iter_all": est.n_iter_all_, "best_restart": est.best_restart_}
        elif name == "ref_canica_sklearn":
            with timer() as t:
                res = _canica_reference(X, k, n_restarts, 0)
        elif name == "ref_canica_nilearn":
            with timer() as t:
                res = _canica_nilearn(X, k, n_restarts, 0)
        else:
            raise SystemExit(f"unknown worker {name}")
    np.save(out, np.asarray(res, dtype=np.float64))
    print(json.dumps({"fit_s": t["s"], "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": base, **extra}))


# --------------------------------------------------------------------------- comparison
def matched(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """Mean and min Hungarian-matched |corr| between the columns of A and B."""
    from scipy.optimize import linear_sum_assignment

    A = (A - A.mean(0)) / (A.std(0) + 1e-30)
    B = (B - B.mean(0)) / (B.std(0) + 1e-30)
    C = np.abs(A.T @ B) / len(A)
    r, c = linear_sum_assignment(-C)
    return float(C[r, c].mean()), float(C[r, c].min())


#: each implementation's reference for the |r| column (the first one that ran)
REFERENCE = {
    "ours_fastica": ("sklearn_fastica64", "sklearn_fastica32"),
    "sklearn_fastica32": ("sklearn_fastica64",),
    "ours_canica": ("ref_canica_nilearn", "ref_canica_sklearn"),
    "ref_canica_sklearn": ("ref_canica_nilearn",),
}
#: the speed ratios BENCHMARKS.md quotes: (label, ours, reference)
RATIOS = [
    ("FastICA vs scikit-learn float64", "ours_fastica", "sklearn_fastica64"),
    ("FastICA vs scikit-learn float32", "ours_fastica", "sklearn_fastica32"),
    ("CanICA vs nilearn", "ours_canica", "ref_canica_nilearn"),
    ("CanICA vs scikit-learn composition", "ours_canica", "ref_canica_sklearn"),
]


def _r(agreement: dict[str, dict[str, float]], a: str, b: str) -> dict[str, str]:
    """Mean and min matched |r| of ``a`` vs ``b`` as printed figures (empty when the pair did not run)."""
    v = agreement.get(f"{a} vs {b}")
    return {"mean_abs_r": f"{v['mean_abs_r']:.3f}", "min_abs_r": f"{v['min_abs_r']:.3f}"} if v else {}


def report_tables(
    results: dict[str, dict], agreement: dict[str, dict[str, float]]
) -> tuple[list[dict], list[dict]]:
    """Rows per implementation (time, memory, |r| vs its reference) and rows per quoted speed ratio."""
    rows = []
    for name, r in results.items():
        ref = next((c for c in REFERENCE.get(name, ()) if f"{name} vs {c}" in agreement), None)
        rows.append({"implementation": name, "fit_s": r.get("fit_s"), "peak_rss_mb": r.get("peak_rss_mb"),
                     "rss_after_load_mb": r.get("rss_after_load_mb"), "abs_r_vs": ref or "",
                     **(_r(agreement, name, ref) if ref else {}), "error": "yes" if "error" in r else ""})
    ratios = []
    for label, ours, ref in RATIOS:
        if "fit_s" in results.get(ours, {}) and "fit_s" in results.get(ref, {}):
            ours_s, ref_s = results[ours]["fit_s"], results[ref]["fit_s"]
            ratios.append({"comparison": label, "ours_s": ours_s, "reference_s": ref_s,
                           "speedup": f"{ref_s / ours_s:.1f}x", **_r(agreement, ours, ref)})
    return rows, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["smollm2", "synthetic"], default="smollm2")
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--no-f64", action="store_true", help="skip the sklearn float64 reference")
    ap.add_argument("--cache", help="a .npy path: reuse the collected smollm2 activations from it, or save them there")
    ap.add_argument("--no-nilearn", action="store_true")
    ap.add_argument("--skip-canica", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=K)
    ap.add_argument("--restarts", type=int, default=10)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.out, args.k, args.restarts)
        return

    k = 8 if args.quick else args.k
    truth = None
    source = args.source
    with timer() as t_data:
        if args.quick:
            source = "synthetic"
            X, truth = synthetic(256, 3000, k)
        elif source == "smollm2" and args.cache and Path(args.cache).exists():
            X = np.load(args.cache)
        elif source == "smollm2":
            try:
                X = smollm2(args.tokens)
                if args.cache:
                    np.save(args.cache, X)
            except Exception as exc:  # noqa: BLE001 - fall back, but say so
                print(f"smollm2 source unavailable ({type(exc).__name__}: {exc}); using synthetic", file=sys.stderr)
                source = "synthetic (smollm2 failed)"
                X, truth = synthetic(args.tokens, 46080, k)
        else:
            X, truth = synthetic(args.tokens, 46080, k)
    X = np.ascontiguousarray(X, dtype=np.float32)
    print(f"data: {source}, X {X.shape} float32, built in {t_data['s']:.1f} s", flush=True)

    impls = ["ours_fastica", "sklearn_fastica32"] + ([] if args.no_f64 else ["sklearn_fastica64"])
    if not args.skip_canica:
        impls += ["ours_canica", "ref_canica_sklearn"] + ([] if args.no_nilearn else ["ref_canica_nilearn"])
    OUT_DIR.mkdir(exist_ok=True)
    results: dict[str, dict] = {}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        data = str(Path(tmp) / "X.npy")
        np.save(data, X)
        for name in impls:
            out = str(Path(tmp) / f"{name}.npy")
            r = run_worker(
                [__file__, "--worker", name, "--data", data, "--out", out, "--k", str(k),
                 "--restarts", str(args.restarts)]
            )
            results[name] = r
            if "error" not in r:
                outputs[name] = np.load(out)
            print(f"  {name}: {r.get('fit_s', r.get('error', '')[-300:])}", flush=True)

    # agreement: temporal sources (n, k) and spatial maps (k, f) -> compare columns over tokens/features
    pairs = [("ours_fastica", "sklearn_fastica32"), ("ours_fastica", "sklearn_fastica64"),
             ("sklearn_fastica32", "sklearn_fastica64"), ("ours_canica", "ref_canica_sklearn"),
             ("ours_canica", "ref_canica_nilearn"), ("ref_canica_sklearn", "ref_canica_nilearn")]
    agreement = {}
    for a, b in pairs:
        if a in outputs and b in outputs:
            A, B = outputs[a], outputs[b]
            if A.shape[0] < A.shape[1]:  # maps: (k, f)
                A, B = A.T, B.T
            agreement[f"{a} vs {b}"] = dict(zip(("mean_abs_r", "min_abs_r"), matched(A, B)))
    if truth is not None:
        for name in ("ours_fastica", "sklearn_fastica32", "sklearn_fastica64"):
            if name in outputs:
                agreement[f"{name} vs planted"] = dict(zip(("mean_abs_r", "min_abs_r"), matched(outputs[name], truth)))

    rows, ratios = report_tables(results, agreement)
    payload = {
        "benchmark": "ica", "source": source, "shape": list(X.shape), "n_components": k,
        "n_restarts": args.restarts, "quick": args.quick, "machine": machine_info(),
        "results": results, "agreement": agreement, "ratios": ratios,
        "notes": "ref_canica_sklearn = z-score + sklearn randomized_svd(n_iter=5) + sklearn fastica(cube) "
                 "x n_restarts, sparsest kept; ref_canica_nilearn = nilearn CanICA on the matrix as a "
                 "(f,1,1,n) image, all-ones mask, no smoothing/detrend, do_cca=False, threshold=None.",
    }
    path = write_json("ica_quick" if args.quick else "ica", payload)
    print()
    print(markdown_table(rows, ["implementation", "fit_s", "peak_rss_mb", "rss_after_load_mb", "abs_r_vs",
                                "mean_abs_r", "min_abs_r", "error"]))
    print()
    print(markdown_table(ratios, ["comparison", "ours_s", "reference_s", "speedup", "mean_abs_r",
                                  "min_abs_r"]))
    print()
    print(markdown_table([{"pair": p, **_r(agreement, *p.split(" vs "))} for p in agreement],
                         ["pair", "mean_abs_r", "min_abs_r"]))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
