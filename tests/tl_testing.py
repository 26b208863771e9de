"""Test helpers shared across the suite, imported as ``tl_testing`` (conftest modules cannot be
imported by name reliably: several test folders have one)."""

from __future__ import annotations

#: Every model a fixture hands out is checked for leftover hooks after each test.
GUARDED_MODELS: list = []


def count_hooks(model) -> int:
    """Hooks attached to any hook point of ``model``, counted in torch's own hook dicts (the ground truth)."""
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


#: three short passages of different genres (fingerprints of tiny models with the character tokenizer)
SHORT_TEXTS = [
    "The old lift stopped between the second and third floors, with four people inside. "
    "Nobody spoke for a while; then the boy asked whether sharks ever sleep.",
    "To repot a fern, water it the day before, loosen the root ball gently, and choose a pot "
    "only slightly larger than the old one.",
    "Dear Marta, thank you for the parcel of seeds. The tomatoes came up in nine days, faster "
    "than any year before.",
]


def guard(model):
    GUARDED_MODELS.append(model)
    return model


def make_gpt2_style(seed: int = 0, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=50, n_ctx=12, act_fn="gelu",
              normalization_type="LN", seed=seed)
    kw.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**kw))


def make_sae_transformer(seed: int = 0):
    """A sae-lens HookedSAETransformer with the weights of ``make_gpt2_style(seed)``."""
    from sae_lens import HookedSAETransformer

    base = make_gpt2_style(seed)
    model = HookedSAETransformer(base.cfg)
    model.load_state_dict(base.state_dict())
    return model.eval()


def make_llama_style(seed: int = 0, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2, d_mlp=32, d_vocab=50, n_ctx=12,
              act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4,
              gated_mlp=True, final_rms=True, seed=seed)
    kw.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**kw))


# --------------------------------------------------------------------------- saving rules (tl_funcnet._io)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (so no process has it, barring reuse)."""
    import os
    import subprocess
    import sys

    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", ""])
        child.wait()
        try:
            os.kill(child.pid, 0)
        except ProcessLookupError:
            return child.pid
    raise RuntimeError("could not find a pid that is not in use")


def _content(file):
    """A file's content for comparisons: its bytes; for ``.safetensors`` its metadata and tensors (the header's
    key order varies between identical saves)."""
    if file.suffix != ".safetensors":
        return file.read_bytes()
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
    except Exception:  # noqa: BLE001 - a corrupt file compares by its bytes
        return file.read_bytes()
    import torch

    return (meta, {k: (str(t.dtype), tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                   for k, t in sorted(tensors.items())})


def snapshot(path) -> dict:
    """Every file below ``path`` (or ``path`` itself if it is a file) as {relative path: content}."""
    from pathlib import Path

    root = Path(path)
    if root.is_file():
        return {".": _content(root)}
    return {str(p.relative_to(root)): _content(p) for p in sorted(root.rglob("*")) if p.is_file()}


def check_save_rules(save, other, tmp_path, *, folder: bool = True) -> None:
    """Check the saving rules every tl_funcnet writer follows (see ``tl_funcnet._io``).

    ``save(path, overwrite)`` and ``other(path, overwrite)`` write two different artefacts of the same kind
    (the second is used to see that ``overwrite=True`` really replaces). ``folder``: whether the artefact is a
    folder (else a single file). Creates its cases under ``tmp_path``.
    """
    import os

    import pytest

    from tl_funcnet.errors import FuncnetError, OverwriteError

    def refused(path, overwrite):
        with pytest.raises(OverwriteError) as info:
            save(path, overwrite)
        assert isinstance(info.value, FuncnetError) and isinstance(info.value, FileExistsError)
        assert str(path) in str(info.value)

    def leftovers(parent):
        return sorted(p.name for p in parent.iterdir() if ".tlfn-" in p.name)

    # a folder of the user's own files is never replaced, not even with overwrite=True
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("three years of work")
    (user / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = snapshot(user)
    for overwrite in (False, True):
        refused(user, overwrite)
    assert snapshot(user) == before and sorted(os.listdir(user)) == ["sub", "thesis.txt"]
    assert leftovers(tmp_path) == []

    # nor is a regular file (for folder artefacts), nor a path below a regular file
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"not yours")
    if folder:
        for overwrite in (False, True):
            refused(plain, overwrite)
    else:
        for overwrite in (False, True):
            refused(user, overwrite)  # a folder where a file artefact goes
    with pytest.raises(OverwriteError, match="is a file"):
        save(plain / "inside" / "x", True)
    assert plain.read_bytes() == b"not yours"
    if not folder:  # a foreign regular file is refused for file artefacts too
        for overwrite in (False, True):
            refused(plain, overwrite)
        assert plain.read_bytes() == b"not yours"

    # a new path and (for folders) an empty existing folder are accepted
    target = tmp_path / "art"
    save(target, False)
    first = snapshot(target)
    assert first
    if folder:
        empty = tmp_path / "empty"
        empty.mkdir()
        save(empty, False)
        assert snapshot(empty) == first

    # saving again needs overwrite=True, which replaces the artefact (and only then)
    with pytest.raises(OverwriteError, match="overwrite=True"):
        other(target, False)
    assert snapshot(target) == first
    other(target, True)
    fresh = tmp_path / "fresh"
    other(fresh, False)
    assert snapshot(target) == snapshot(fresh) != first
    assert leftovers(tmp_path) == []

    # temporary leftovers of a killed save are removed by the next save to the same place; those of a live
    # process (this one, or another running process) and those of other targets are kept
    again = tmp_path / "again"
    dead = dead_pid()
    stale_dir = tmp_path / f".again.tlfn-{dead}-0badf00d.tmp"
    stale_dir.mkdir()
    (stale_dir / "half_written.bin").write_bytes(b"\0" * 10)
    stale_old = tmp_path / f".again.tlfn-{dead}-0badf00e.old"
    stale_old.write_bytes(b"old")
    kept = [tmp_path / f".again.tlfn-{os.getpid()}-11111111.tmp",  # our own: a save in progress
            tmp_path / f".again.tlfn-{os.getppid()}-22222222.tmp",  # a running process
            tmp_path / f".other.tlfn-{dead}-33333333.tmp",  # another target's
            tmp_path / ".again.tlfn-notapid-44444444.tmp"]  # not ours to judge
    for p in kept:
        p.write_bytes(b"keep")
    save(again, False)
    assert not stale_dir.exists() and not stale_old.exists()
    assert all(p.read_bytes() == b"keep" for p in kept)
    assert snapshot(again) == first


# --------------------------------------------------------------------------- circuits


def edge_flags(model):
    """The TransformerLens flags an edge graph switches on, as the model holds them now."""
    from tl_funcnet.circuits.run import EDGE_FLAGS

    return {f: getattr(model.cfg, f, None) for f in sorted(EDGE_FLAGS)}


def full_circuit(graph):
    import torch

    from tl_funcnet.circuits import Circuit

    return Circuit(graph, torch.ones(graph.n_edges, dtype=torch.bool))


def empty_circuit(graph):
    import torch

    from tl_funcnet.circuits import Circuit

    return Circuit(graph, torch.zeros(graph.n_edges, dtype=torch.bool))


# --------------------------------------------------------------------------- TransformerBridge twins


def _tiny_hf_llama(seed: int, n_kv: int = 2):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=n_kv, max_position_embeddings=12,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def make_bridge_llama(seed: int = 0, compatibility: bool = True, n_kv: int = 2):
    """A tiny random Llama as a TransformerBridge (the embedded SmolLM2 tokenizer; token ids < 50); 4 query heads
    share ``n_kv`` k/v heads."""
    from transformer_lens.model_bridge import TransformerBridge

    from tl_funcnet.models import locate
    from tl_funcnet.models.smollm2 import gguf_tokenizer

    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=_tiny_hf_llama(seed, n_kv),
                                                 tokenizer=gguf_tokenizer(locate("smollm2-135m")))
    bridge.cfg.default_prepend_bos = False
    if compatibility:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge.eval()


def make_hooked_twin(seed: int = 0, n_kv: int = 2):
    """The HookedTransformer with the weights of ``make_bridge_llama(seed)`` (TransformerLens's conversion and
    default processing), for parity tests."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    hf = _tiny_hf_llama(seed, n_kv)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, n_key_value_heads=n_kv, d_mlp=32,
                                  d_vocab=50, n_ctx=12, act_fn="silu", normalization_type="RMSPre",
                                  positional_embedding_type="rotary", rotary_dim=4, rotary_adjacent_pairs=False,
                                  rotary_base=10000.0, eps=1e-5, gated_mlp=True, final_rms=True,
                                  original_architecture="LlamaForCausalLM", default_prepend_bos=False)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)
    return model.eval()


def has_hooked_transformer() -> bool:
    """Whether this transformer-lens still has HookedTransformer (TransformerLens 4 raises on the import)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True
