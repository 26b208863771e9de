"""Build the fingerprint robustness zoo reproducibly from the embedded models, cached under bench_out/zoo/.

Derived from SmolLM2-135M: fine-tuned (finetune split), MLP units permuted, 20% MLP units pruned, int8
quantize-dequantize, widened MLP (zero-output extra units), one layer dropped, residual basis rotated.
Independent: SmolLM2's architecture randomly initialised; small Llama-style models trained from scratch on
the built-in corpus (calibration split) with SmolLM2's tokenizer and different seeds; MiniLM (loaded by name).
A second family uses tiny scratch model ``tiny-s0`` as victim, with its own derived copies.

    python benchmarks/zoo.py            # build (or reuse) everything, print the manifest as a table
    python benchmarks/zoo.py --quick    # tiny random models only, seconds (CI)

Every entry is saved with ``tl_funcnet.models.save``; ``bench_out/zoo/manifest.json`` records how each was
made (seeds, steps, losses, seconds). Delete an entry's folder (or its manifest line) to rebuild it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OUT_DIR  # noqa: E402

ZOO_DIR = OUT_DIR / "zoo"
FT_STEPS, FT_BATCH, FT_LEN, FT_LR = 300, 2, 64, 3e-5
TINY_STEPS, TINY_BATCH, TINY_LEN, TINY_LR = 80, 4, 64, 3e-3
TINY_CFG = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=512, act_fn="silu",
                normalization_type="RMSPre", positional_embedding_type="rotary", rotary_dim=32, gated_mlp=True,
                final_rms=True, default_prepend_bos=False)


def log(msg: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def token_stream(tokenizer: Any, split: str) -> torch.Tensor:
    from tl_funcnet.data import load_corpus

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in load_corpus(split):
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    return torch.tensor(ids, dtype=torch.long)


def train(model: Any, stream: torch.Tensor, *, steps: int, batch: int, length: int, lr: float, random_state: int,
          warmup: int = 0) -> list[float]:
    """AdamW on random windows of ``stream`` (drawn from ``random_state``; cosine decay after ``warmup``);
    returns the loss per step."""
    g = torch.Generator().manual_seed(random_state)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        start = torch.randint(0, len(stream) - length - 1, (batch,), generator=g)
        toks = torch.stack([stream[s:s + length] for s in start.tolist()])
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        loss = model(toks, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            log(f"    step {step}/{steps} loss {losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def eval_loss(model: Any, tokenizer: Any, n_texts: int = 8) -> float:
    """Mean next-token loss on the first ``n_texts`` evaluation passages."""
    stream = token_stream(tokenizer, "evaluation")[: n_texts * 200]
    chunks = stream[: len(stream) // 100 * 100].reshape(-1, 100)
    return float(model(chunks, return_type="loss"))


def tiny_model(tokenizer: Any, d_vocab: int, random_state: int) -> Any:
    """A small Llama-style model with ``tokenizer``, initialised from ``random_state``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**TINY_CFG, d_vocab=d_vocab, seed=random_state)
    model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    model.set_tokenizer(tokenizer, default_padding_side="right")
    return model


def random_like(model: Any, random_state: int) -> Any:
    """Same architecture and tokenizer as ``model``, freshly initialised."""
    from tl_funcnet.fingerprint.transforms import random_init

    return random_init(model, random_state=random_state)


class Zoo:
    """Builds entries lazily and caches them; ``manifest`` maps name -> metadata."""

    def __init__(self, root: Path = ZOO_DIR):
        self.root = root
        self.file = root / "manifest.json"
        self.manifest: dict[str, Any] = json.loads(self.file.read_text()) if self.file.exists() else {}

    def entry(self, name: str, build: Callable[[], tuple[Any, dict]], **meta: Any) -> Path:
        from tl_funcnet._io import write_json_atomic
        from tl_funcnet.models import is_saved_model, save

        path = self.root / name
        if is_saved_model(path) and name in self.manifest:
            return path
        log(f"building {name} ...")
        t0 = time.perf_counter()
        model, extra = build()
        save(model, path, overwrite=True)  # a rebuild replaces the entry's earlier model
        self.manifest[name] = {**meta, **extra, "path": str(path), "build_seconds": round(time.perf_counter() - t0, 1)}
        write_json_atomic(self.file, self.manifest)
        log(f"  {name} done in {self.manifest[name]['build_seconds']} s {extra}")
        return path


def build(quick: bool = False) -> dict[str, Any]:
    """Build (or reuse) the zoo; returns the manifest."""
    from tl_funcnet.fingerprint import transforms as T
    from tl_funcnet.models import load

    torch.manual_seed(0)
    if quick:
        return build_quick()
    zoo = Zoo()
    smol = load("smollm2-135m")
    tok = smol.tokenizer
    derived = dict(kind="derived", victim="smollm2-135m")

    def finetune():  # trains the victim copy in place (runs last): one 135M model + AdamW in memory
        model = smol
        before = eval_loss(model, tok)
        losses = train(model, token_stream(tok, "finetune"), steps=FT_STEPS, batch=FT_BATCH, length=FT_LEN,
                       lr=FT_LR, random_state=0)
        return model, {"steps": FT_STEPS, "batch": f"{FT_BATCH}x{FT_LEN}", "lr": FT_LR, "eval_loss_before": before,
                       "train_loss_first10": sum(losses[:10]) / 10, "train_loss_last10": sum(losses[-10:]) / 10,
                       "eval_loss": eval_loss(model, tok)}

    zoo.entry("smol-perm", lambda: (T.permute_mlp(smol, random_state=1), {}), **derived, how="MLP units permuted")
    zoo.entry("smol-rot", lambda: (T.rotate_residual(smol, random_state=1), {}), **derived, how="residual rotated")
    def pruned(model: Any, method: str, **kw: Any) -> Callable[[], tuple[Any, dict]]:
        def build() -> tuple[Any, dict]:
            from tl_funcnet.pruning import prune

            small, plan = prune(model, 0.2, method, **kw)
            return small, {"eval_loss": eval_loss(small, tok), "eval_loss_before": eval_loss(model, tok),
                           "params_after": plan.param_counts(model)["params_after"]}
        return build

    # a pruner an owner would fear keeps the model useful (Wanda-style + bias compensation, ppl x1.5); the
    # magnitude prune of every layer without compensation is kept as a stress case (ppl x30, a broken model)
    zoo.entry("smol-prune20", pruned(smol, "wanda"), **derived,
              how="20% of MLP neurons hard-pruned (tl_funcnet.pruning, wanda, bias compensation, layers 0-2 "
                  "and last 2 kept)")
    zoo.entry("smol-prune20-mag", pruned(smol, "magnitude", bias_compensation=False, texts=None, protect_first=0,
                                         protect_last=0), **derived,
              how="20% of MLP neurons per layer by weight magnitude, every layer, no compensation")
    zoo.entry("smol-int8", lambda: (T.quantize_int8(smol), {}), **derived, how="per-row int8 quant-dequant")
    zoo.entry("smol-widen", lambda: (T.widen_mlp(smol, 256), {}), **derived, how="+256 zero-output MLP units")
    zoo.entry("smol-drop", lambda: (T.drop_layer(smol, 15), {}), **derived, how="layer 15 of 30 dropped")
    zoo.entry("smol-random", lambda: (random_like(smol, random_state=7), {}), kind="independent", victim="smollm2-135m",
              how="same architecture, random init")
    stream = token_stream(tok, "calibration")
    for seed in (0, 1):
        def scratch(seed: int = seed) -> tuple[Any, dict]:
            model = tiny_model(tok, smol.cfg.d_vocab, seed)
            losses = train(model, stream, steps=TINY_STEPS, batch=TINY_BATCH, length=TINY_LEN, lr=TINY_LR,
                           random_state=seed, warmup=20)
            return model, {"steps": TINY_STEPS, "batch": f"{TINY_BATCH}x{TINY_LEN}", "lr": TINY_LR,
                           "train_loss_last10": sum(losses[-10:]) / 10, "eval_loss": eval_loss(model, tok)}

        zoo.entry(f"tiny-s{seed}", scratch, kind="independent", victim="smollm2-135m",
                  how=f"4-layer d128 Llama-style trained from scratch, seed {seed}")
    tiny0 = load(zoo.root / "tiny-s0")
    tderived = dict(kind="derived", victim="tiny-s0")

    def tiny_ft():
        model = load(zoo.root / "tiny-s0")
        losses = train(model, token_stream(tok, "finetune"), steps=100, batch=8, length=64, lr=3e-4, random_state=5)
        return model, {"steps": 100, "lr": 3e-4, "train_loss_last10": sum(losses[-10:]) / 10,
                       "eval_loss": eval_loss(model, tok)}

    zoo.entry("tiny-s0-rot", lambda: (T.rotate_residual(tiny0, random_state=3), {}), **tderived,
              how="residual rotated")
    zoo.entry("tiny-s0-prune20", pruned(tiny0, "wanda", protect_first=0, protect_last=0), **tderived,
              how="20% of MLP neurons hard-pruned (wanda, bias compensation)")
    zoo.entry("tiny-s0-ft", tiny_ft, **tderived, how="fine-tuned 100 steps on the finetune split")
    zoo.entry("smol-ft", finetune, **derived, how="fine-tuned on the finetune split")
    return zoo.manifest


def build_quick() -> dict[str, Any]:
    """Tiny random models (char-level, no tokenizer) for CI: returns name -> (model, metadata)."""
    import copy

    from tl_funcnet.fingerprint import transforms as T

    cfg = dict(TINY_CFG, n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, rotary_dim=8, n_ctx=1200)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    def make(seed: int) -> Any:
        return HookedTransformer(HookedTransformerConfig(**copy.deepcopy(cfg), d_vocab=256, seed=seed)).eval()

    v = make(0)
    derived = {"kind": "derived", "victim": "q-victim"}
    independent = {"kind": "independent", "victim": "q-victim"}
    return {
        "q-victim": (v, {"kind": "victim", "how": "random init, seed 0"}),
        "q-perm": (T.permute_mlp(v, random_state=1), {**derived, "how": "MLP units permuted"}),
        "q-rot": (T.rotate_residual(v, random_state=1), {**derived, "how": "residual rotated"}),
        "q-int8": (T.quantize_int8(v), {**derived, "how": "per-row int8 quant-dequant"}),
        "q-s1": (make(1), {**independent, "how": "random init, seed 1"}),
        "q-s2": (make(2), {**independent, "how": "random init, seed 2"}),
    }


def table(manifest: dict[str, Any]) -> str:
    """The manifest as a markdown table: how each entry was made and its held-out loss before / after."""

    def fmt(x: Any) -> str:
        return "" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = ["| entry | kind | victim | how | eval loss before | eval loss | build s |", "|---|---|---|---|---|---|---|"]
    for name, m in manifest.items():
        lines.append(f"| {name} | {m.get('kind', '')} | {m.get('victim', '')} | {m.get('how', '')} | "
                     f"{fmt(m.get('eval_loss_before'))} | {fmt(m.get('eval_loss'))} | {fmt(m.get('build_seconds'))} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = build(quick=args.quick)
    if args.quick:
        manifest = {k: m for k, (_, m) in manifest.items()}
    print(table(manifest))
    if not args.quick:
        print(f"\nmanifest: {ZOO_DIR / 'manifest.json'}")


if __name__ == "__main__":
    main()
