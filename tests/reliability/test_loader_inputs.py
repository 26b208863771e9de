"""Bad files: hand-edited, truncated, bit-flipped or foreign artefacts are reported as such by every loader
(naming the file and, for JSON, the key), never trusted; saves refuse to replace what is not theirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from reliability_tally import try_bad_input
from tl_funcnet.errors import FuncnetError, OverwriteError
from tl_testing import make_gpt2_style


@pytest.fixture(scope="module")
def gpt2():
    return make_gpt2_style().eval()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, gpt2):
    """One saved artefact of every kind, to copy and damage."""
    from tl_funcnet.activations import collect
    from tl_funcnet.fingerprint import fingerprint
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.hooks import ablate, steer
    from tl_funcnet.models import save

    root = tmp_path_factory.mktemp("artefacts")
    (steer("blocks.0.hook_resid_post", torch.ones(16)) + ablate("blocks.1.mlp.hook_post", units=[1])).save(root / "iv")
    g = torch.Generator().manual_seed(0)
    acts = collect(gpt2, [torch.randint(0, 50, (12,), generator=g) for _ in range(12)], "mlp.hook_post",
                   progress=False)
    acts.save(root / "acts")
    FunctionalNetworks(3, threshold=1.5, max_iter=50).fit(acts).save(root / "nets")
    save(gpt2, root / "model")
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"
    fingerprint(gpt2, [text, text + " upsilon"], n_networks=3, tokenizer="chars").save(root / "fp.safetensors")
    return root


def _copy(artefacts: Path, name: str, to: Path) -> Path:
    src, dst = artefacts / name, to / name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _flip_byte(path: Path, offset_from_end: int = 3) -> None:
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(raw))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _loaders():
    from tl_funcnet.activations import Activations
    from tl_funcnet.fingerprint import Fingerprint
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.hooks import Intervention
    from tl_funcnet.models import load

    return {"iv": Intervention.load, "nets": FunctionalNetworks.load, "model": load, "acts": Activations.load,
            "fp.safetensors": Fingerprint.load}


def _hooks(d):
    return d["hooks"]


DAMAGE = {
    # interventions
    "iv: json not an object": ("iv", "intervention.json", lambda p: p.write_text("[1, 2]")),
    "iv: truncated json": ("iv", "intervention.json", lambda p: p.write_text(p.read_text()[:40])),
    "iv: other format": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: d.update(format="x"))),
    "iv: other version": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: d.update(version=99))),
    "iv: hooks missing": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: d.pop("hooks"))),
    "iv: hooks not a list": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: d.update(hooks={}))),
    "iv: hook not an object": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: d.update(hooks=[3]))),
    "iv: site missing": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: _hooks(d)[0].pop("site"))),
    "iv: site a number": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: _hooks(d)[0].update(site=3))),
    "iv: unknown op": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: _hooks(d)[0].update(op="zap"))),
    "iv: params a list": ("iv", "intervention.json", lambda p: _edit_json(p, lambda d: _hooks(d)[0].update(params=[]))),
    "iv: unknown param": ("iv", "intervention.json",
                          lambda p: _edit_json(p, lambda d: _hooks(d)[0]["params"].update(scael=2))),
    "iv: scale a string": ("iv", "intervention.json",
                           lambda p: _edit_json(p, lambda d: _hooks(d)[0]["params"].update(scale="2"))),
    "iv: units floats": ("iv", "intervention.json",
                         lambda p: _edit_json(p, lambda d: _hooks(d)[1]["params"].update(units=[1.5]))),
    "iv: missing tensor reference": ("iv", "intervention.json", lambda p: _edit_json(
        p, lambda d: _hooks(d)[0]["params"].update(vector={"__tensor__": "nowhere"}))),
    "iv: wrong checksum": ("iv", "intervention.json",
                           lambda p: _edit_json(p, lambda d: d.update(tensors_sha256="0" * 64))),
    "iv: tensors truncated": ("iv", "tensors.safetensors", lambda p: p.write_bytes(p.read_bytes()[:20])),
    "iv: tensors bit flipped": ("iv", "tensors.safetensors", _flip_byte),
    "iv: tensors missing": ("iv", "tensors.safetensors", lambda p: p.unlink()),
    "iv: json missing": ("iv", "intervention.json", lambda p: p.unlink()),
    # functional networks
    "nets: params missing": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.pop("params"))),
    "nets: n_networks a string": ("nets", "networks.json",
                                  lambda p: _edit_json(p, lambda d: d["params"].update(n_networks="3"))),
    "nets: unknown param": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d["params"].update(foo=1))),
    "nets: sites not a list": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.update(sites="x"))),
    "nets: widths disagree": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.update(widths=[1]))),
    "nets: negative width": ("nets", "networks.json",
                             lambda p: _edit_json(p, lambda d: d.update(widths=[-32] + d["widths"][1:]))),
    "nets: converged a string": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.update(converged="y"))),
    "nets: blocks malformed": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.update(blocks=[{"x": 1}]))),
    "nets: old version": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.update(version=1))),
    "nets: tensors bit flipped": ("nets", "networks.safetensors", _flip_byte),
    "nets: tensors truncated": ("nets", "networks.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "nets: checksum removed": ("nets", "networks.json", lambda p: _edit_json(p, lambda d: d.pop("tensors_sha256"))),
    # models
    "model: config not json": ("model", "config.json", lambda p: p.write_text("{oops")),
    "model: other format": ("model", "config.json", lambda p: _edit_json(p, lambda d: d.update(format="x"))),
    "model: class unknown": ("model", "config.json", lambda p: _edit_json(p, lambda d: d.update({"class": "Bert"}))),
    "model: class a number": ("model", "config.json", lambda p: _edit_json(p, lambda d: d.update({"class": 3}))),
    "model: config a list": ("model", "config.json", lambda p: _edit_json(p, lambda d: d.update(config=[]))),
    "model: config unknown field": ("model", "config.json",
                                    lambda p: _edit_json(p, lambda d: d["config"].update(d_foo=3))),
    "model: d_model a string": ("model", "config.json",
                                lambda p: _edit_json(p, lambda d: d["config"].update(d_model="16"))),
    "model: widths not ints": ("model", "config.json",
                               lambda p: _edit_json(p, lambda d: d.update(d_mlp_per_layer=["a", "b"]))),
    "model: widths too few": ("model", "config.json", lambda p: _edit_json(p, lambda d: d.update(d_mlp_per_layer=[8]))),
    "model: tokenizer a number": ("model", "config.json", lambda p: _edit_json(p, lambda d: d.update(tokenizer=3))),
    "model: weights truncated": ("model", "model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:64])),
    "model: weights missing": ("model", "model.safetensors", lambda p: p.unlink()),
    "model: weights of another shape": ("model", "config.json",
                                        lambda p: _edit_json(p, lambda d: d["config"].update(d_mlp=8))),
    # activation stores
    "acts: manifest not json": ("acts", "manifest.json", lambda p: p.write_text("nope")),
    "acts: sites not a list": ("acts", "manifest.json", lambda p: _edit_json(p, lambda d: d.update(sites=3))),
    "acts: n_tokens a string": ("acts", "manifest.json", lambda p: _edit_json(p, lambda d: d.update(n_tokens="1"))),
    "acts: files disagree with sites": ("acts", "manifest.json", lambda p: _edit_json(p, lambda d: d.update(files={}))),
    "acts: file outside the store": ("acts", "manifest.json", lambda p: _edit_json(
        p, lambda d: d.update(files={k: "../x.npy" for k in d["files"]}))),
    "acts: wrong token count": ("acts", "manifest.json", lambda p: _edit_json(p, lambda d: d.update(n_tokens=5))),
    "acts: tokens corrupt": ("acts", "tokens.pt", lambda p: p.write_bytes(b"not a torch file")),
    "acts: site file truncated": ("acts", "site_000.npy", lambda p: p.write_bytes(p.read_bytes()[:60])),
    # fingerprints
    "fp: bit flipped": ("fp.safetensors", "", _flip_byte),
    "fp: truncated": ("fp.safetensors", "", lambda p: p.write_bytes(p.read_bytes()[:50])),
    "fp: not safetensors": ("fp.safetensors", "", lambda p: p.write_text("hello")),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_artefact_is_reported(name, artefacts, user_folder):
    what, file, damage = DAMAGE[name]
    target = _copy(artefacts, what, user_folder)
    damage(target / file if file else target)
    loader = _loaders()[what]
    out = try_bad_input(name, lambda: loader(target), folder=user_folder, expect=FuncnetError)
    assert out.clean, out


def _savers(gpt2, artefacts):
    from tl_funcnet.activations import Activations
    from tl_funcnet.fingerprint import Fingerprint
    from tl_funcnet.funcnet import FunctionalNetworks
    from tl_funcnet.hooks import detach
    from tl_funcnet.models import save

    nets = FunctionalNetworks.load(artefacts / "nets")
    acts = Activations.load(artefacts / "acts")
    fp = Fingerprint.load(artefacts / "fp.safetensors")
    return {"intervention": detach("blocks.0.hook_resid_post").save, "model": lambda p, **k: save(gpt2, p, **k),
            "networks": nets.save, "activations": acts.save, "fingerprint": fp.save}


TARGETS = {
    "a folder with a user's files": lambda root: root,
    "a user's file": lambda root: root / "thesis.txt",
    "a path under a user's file": lambda root: root / "thesis.txt" / "out",
    "a folder inside the user's data": lambda root: root / "sub",
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("kind", ["intervention", "model", "networks", "activations", "fingerprint"])
def test_save_never_replaces_what_is_not_its_own(kind, target, gpt2, artefacts, user_folder):
    if kind == "fingerprint" and target == "a folder inside the user's data":
        pytest.skip("a fingerprint is a file: covered by the other targets")
    saver = _savers(gpt2, artefacts)[kind]
    path = TARGETS[target](user_folder)
    out = try_bad_input(f"save {kind} onto {target}", lambda: saver(path, overwrite=True), folder=user_folder,
                        expect=OverwriteError)
    assert out.clean, out


@pytest.mark.parametrize("kind", ["intervention", "model", "networks", "activations", "fingerprint"])
def test_save_twice_needs_overwrite(kind, gpt2, artefacts, user_folder):
    saver = _savers(gpt2, artefacts)[kind]
    path = user_folder / ("again.safetensors" if kind == "fingerprint" else "again")
    saver(path)
    out = try_bad_input(f"save {kind} twice without overwrite", lambda: saver(path), folder=user_folder,
                        expect=OverwriteError)
    assert out.clean, out
    saver(path, overwrite=True)  # asked: replaced


@pytest.mark.parametrize("other", ["intervention", "networks"])
def test_save_does_not_replace_another_kind(other, gpt2, artefacts, user_folder):
    savers = _savers(gpt2, artefacts)
    savers[other](user_folder / "art")
    mine = "model" if other == "intervention" else "intervention"
    out = try_bad_input(f"save {mine} over a saved {other}", lambda: savers[mine](user_folder / "art", overwrite=True),
                        folder=user_folder, expect=OverwriteError)
    assert out.clean, out


BAD_TEXT_FILES = {
    "corpus: missing path": ("corpus", lambda root: root / "nope.txt"),
    "corpus: unsupported extension": ("corpus", lambda root: _write(root / "x.csv", "a")),
    "corpus: empty text file": ("corpus", lambda root: _write(root / "e.txt", "   \n\n")),
    "corpus: jsonl with a bad line": ("corpus", lambda root: _write(root / "b.jsonl", '{"text": "a"}\n{oops\n')),
    "corpus: jsonl without text": ("corpus", lambda root: _write(root / "n.jsonl", '{"body": "a"}\n')),
    "corpus: folder without txt": ("corpus", lambda root: root / "sub"),
    "prompts: missing file": ("prompts", lambda root: root / "none.txt"),
    "prompts: empty file": ("prompts", lambda root: _write(root / "p.txt", "\n")),
    "prompts: bad jsonl": ("prompts", lambda root: _write(root / "p.jsonl", "[1]\n")),
    "task: missing file": ("task", lambda root: root / "task.json"),
    "task: not json": ("task", lambda root: _write(root / "t.json", "{")),
    "task: a list": ("task", lambda root: _write(root / "l.json", "[]")),
    "task: pairs missing": ("task", lambda root: _write(root / "p.json", '{"name": "x"}')),
    "task: pair lacks answer": ("task", lambda root: _write(root / "a.json", 
        '{"pairs": [{"clean": "a b", "corrupted": "c d", "distractor": " e"}]}')),
    "task: answer a number": ("task", lambda root: _write(root / "n.json", 
        '{"pairs": [{"clean": "a b", "corrupted": "c d", "answer": 3, "distractor": " e"}]}')),
    "task: unknown name": ("task", lambda root: "no_such_task"),
    "steering pairs: not a pair file": ("pairs", lambda root: _write(root / "s.json", '{"x": 1}')),
}


@pytest.mark.parametrize("name", list(BAD_TEXT_FILES))
def test_bad_text_inputs(name, user_folder):
    from tl_funcnet.data import resolve_texts
    from tl_funcnet.patching.tasks import check_task_spec
    from tl_funcnet.steering import load_pairs, read_prompts

    kind, make = BAD_TEXT_FILES[name]
    source = make(user_folder)
    before_extra = set(p.name for p in user_folder.iterdir())
    reader = {"corpus": resolve_texts, "prompts": read_prompts, "task": check_task_spec, "pairs": load_pairs}[kind]
    out = try_bad_input(name, lambda: reader(source if isinstance(source, str) else str(source)))
    assert out.clean, out
    assert set(p.name for p in user_folder.iterdir()) == before_extra
