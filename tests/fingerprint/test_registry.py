"""The fingerprint registry on tiny random models (char-level tokens): the index and its checks, safe writes,
build(), ranking (in process and on threads, the same numbers), fingerprint_models and an fsspec memory:// registry."""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from tl_testing import SHORT_TEXTS as TEXTS
from tl_testing import make_llama_style

from tl_funcnet.errors import FormatError, FuncnetError, OverwriteError
from tl_funcnet.fingerprint import Fingerprint, FingerprintRegistry, Ranking, fingerprint, fingerprint_models
from tl_funcnet.fingerprint.registry import FORMAT, texts_key
from tl_funcnet.models.ref import ModelRef

KW = {"n_networks": 6, "tokenizer": "chars"}
CMP = {"top_m": 4, "n_null": 100}


def rms_model(seed: int):
    return make_llama_style(seed, normalization_type="RMSPre", n_ctx=512, d_vocab=128, d_model=32, d_head=8,
                            rotary_dim=8).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two unrelated tiny models saved to folders (so any worker can load them by ModelRef)."""
    from tl_funcnet.models import save

    root = tmp_path_factory.mktemp("models")
    return {name: save(rms_model(seed), root / name) for name, seed in (("a", 0), ("b", 7))}


@pytest.fixture(scope="module")
def fps(folders):
    return fingerprint_models({name: ModelRef(folder) for name, folder in folders.items()}, TEXTS, **KW)


@pytest.fixture(scope="module")
def fp_a_seed1(folders):
    """Model a fingerprinted with another ICA start: a second group of entries for rank()."""
    return fingerprint(ModelRef(folders["a"]).load(), TEXTS, random_state=1, name="a", **KW)


@pytest.fixture
def reg(tmp_path, fps):
    r = FingerprintRegistry.create(tmp_path / "reg")
    r.add_many(fps)
    return r


def same_fp(x: Fingerprint, y: Fingerprint) -> bool:
    return (x.texts == y.texts and x.params == y.params and x.model == y.model
            and all(torch.equal(a, b) for a, b in zip(x.series, y.series))
            and all(torch.equal(a, b) for a, b in zip(x.offsets, y.offsets))
            and torch.equal(x.layer_energy, y.layer_energy) and torch.equal(x.units_per_layer, y.units_per_layer))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_index(reg: FingerprintRegistry, change) -> None:
    path = Path(reg.location) / "index.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- index and round trip


def test_round_trip_index_and_entries(reg, fps):
    import hashlib

    again = FingerprintRegistry(reg.location)
    assert again.names == ["a", "b"] == list(again) and len(again) == 2
    assert "a" in again and "c" not in again
    index = json.loads((Path(reg.location) / "index.json").read_text())
    assert index["format"] == FORMAT and index["version"] == 1 and len(index["entries"]) == 2
    e = again.entry("a")
    assert set(e) == {"name", "file", "sha256", "model", "n_networks", "texts_sha256", "params"}
    assert e["file"] == "a.safetensors" and e["n_networks"] == 6 and e["texts_sha256"] == texts_key(fps["a"])
    assert e["sha256"] == hashlib.sha256((Path(reg.location) / "a.safetensors").read_bytes()).hexdigest()
    assert e["model"] == fps["a"].model and e["params"] == fps["a"].params
    assert all(same_fp(again.get(n), fps[n]) for n in ("a", "b"))
    with pytest.raises(FuncnetError, match="no fingerprint named 'c'.*'a', 'b'"):
        again.get("c")


def test_open_and_create_refusals(tmp_path, reg):
    with pytest.raises(FormatError, match=r"index\.json is missing.*FingerprintRegistry\.create"):
        FingerprintRegistry(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FormatError, match=r"plain.index\.json is missing.*FingerprintRegistry\.build"):
        FingerprintRegistry(tmp_path / "plain")
    with pytest.raises(OverwriteError, match="already holds a fingerprint registry"):
        FingerprintRegistry.create(reg.location)
    assert FingerprintRegistry.create(reg.location, exist_ok=True).names == ["a", "b"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OverwriteError, match="a file is there"):
        FingerprintRegistry.create(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_overwrite_replaces_a_registered_name(reg, fps, fp_a_seed1):
    with pytest.raises(OverwriteError, match="already holds 'a'; pass overwrite=True"):
        reg.add("a", fp_a_seed1)
    old = reg.entry("a")["sha256"]
    reg.add("a", fp_a_seed1, overwrite=True)
    assert reg.names == ["a", "b"] and reg.entry("a")["sha256"] != old
    assert same_fp(FingerprintRegistry(reg.location).get("a"), fp_a_seed1)


@pytest.mark.parametrize("case", ["unsafe-name", "not-a-fingerprint", "case-duplicate", "registered-name",
                                  "foreign-file", "empty-name"])
def test_add_many_writes_nothing_when_one_item_is_bad(reg, fps, fp_a_seed1, case):
    folder = Path(reg.location)
    if case == "foreign-file":
        (folder / "mine.safetensors").write_bytes(b"the user's own file")
    before = snapshot(folder)
    items, error, message = {
        "unsafe-name": ({"c": fp_a_seed1, "../d": fp_a_seed1}, FuncnetError, "not a safe file name"),
        "empty-name": ({"c": fp_a_seed1, "": fp_a_seed1}, FuncnetError, "not a safe file name"),
        "not-a-fingerprint": ({"c": fp_a_seed1, "d": "a.safetensors"}, FuncnetError, "not a Fingerprint"),
        "case-duplicate": ({"c": fp_a_seed1, "C": fp_a_seed1}, FuncnetError, "differ only in case"),
        "registered-name": ({"c": fp_a_seed1, "b": fp_a_seed1}, OverwriteError, "already holds 'b'"),
        "foreign-file": ({"c": fp_a_seed1, "mine": fp_a_seed1}, OverwriteError,
                         "never replaces files it did not write"),
    }[case]
    with pytest.raises(error, match=message):
        reg.add_many(items, overwrite=case == "foreign-file")
    assert snapshot(folder) == before
    assert FingerprintRegistry(folder).names == ["a", "b"]


# --------------------------------------------------------------------------- damaged files are named


def _damage(reg, how):
    """Damage entry 'a' (and, where said, make the index agree with the damaged bytes); returns the path."""
    import hashlib

    file = Path(reg.location) / "a.safetensors"
    if how == "sha-mismatch":
        file.write_bytes(file.read_bytes() + b"\0")
        return file
    if how == "corrupt":
        file.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    elif how == "foreign":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(file))
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    edit_index(reg, lambda d: d["entries"][0].update(sha256=digest))
    return file


@pytest.mark.parametrize("how, message", [("sha-mismatch", "SHA-256"), ("corrupt", "not a readable safetensors"),
                                          ("foreign", "no tl_funcnet header")])
def test_damaged_entry_is_a_format_error_naming_the_file(reg, fps, how, message):
    file = _damage(reg, how)
    fresh = FingerprintRegistry(reg.location)
    with pytest.raises(FormatError, match=message) as info:
        fresh.get("a")
    assert str(file) in str(info.value) and "tlfn-registry" not in str(info.value)  # not the temporary copy
    assert same_fp(fresh.get("b"), fps["b"])
    with pytest.raises(FuncnetError, match=str(file)):  # no partial ranking
        fresh.rank(fps["b"], **CMP)


def test_missing_entry_file_and_edited_index(reg):
    (Path(reg.location) / "b.safetensors").unlink()
    with pytest.raises(FormatError, match=r"b\.safetensors is missing"):
        reg.get("b")
    index = Path(reg.location) / "index.json"
    for change, message in [(lambda d: d["entries"][0].update(file="../a.safetensors"), "points at"),
                            (lambda d: d["entries"][0].update(n_networks="6"), "no valid 'n_networks'"),
                            (lambda d: d.update(format="something.else"), "has format 'something.else'"),
                            (lambda d: d["entries"].append(dict(d["entries"][0])), "appears twice")]:
        good = index.read_text()
        edit_index(reg, change)
        with pytest.raises(FormatError, match=message) as info:
            FingerprintRegistry(reg.location)
        assert str(index) in str(info.value)
        index.write_text(good)
    index.write_text("{not json")
    with pytest.raises(FormatError, match=r"index\.json is not valid JSON"):
        FingerprintRegistry(reg.location)
    index.write_text(json.dumps({"format": FORMAT, "version": 1, "entries": []}))
    assert len(FingerprintRegistry(reg.location)) == 0


def test_edited_index_metadata_is_caught_on_read(reg):
    edit_index(reg, lambda d: d["entries"][0].update(n_networks=7))
    with pytest.raises(FormatError, match="the index was edited"):
        FingerprintRegistry(reg.location).get("a")


# --------------------------------------------------------------------------- build


def test_build_indexes_a_folder_and_refuses_foreign_files(tmp_path, fps):
    folder = tmp_path / "fps"
    for name, fp in fps.items():
        fp.save(folder / f"{name}.safetensors")
    (folder / "notes.txt").write_text("other files are left alone")
    reg = FingerprintRegistry.build(folder)
    assert reg.names == ["a", "b"] and same_fp(reg.get("b"), fps["b"])
    with pytest.raises(OverwriteError, match="pass overwrite=True"):
        FingerprintRegistry.build(folder)
    (folder / "index.json").write_text("{broken")  # a corrupt index is rebuilt from the files
    assert FingerprintRegistry.build(folder, overwrite=True).names == ["a", "b"]
    (folder / "index.json").write_text('{"format": "another.tool"}')
    with pytest.raises(OverwriteError, match="is not a fingerprint registry index"):
        FingerprintRegistry.build(folder, overwrite=True)

    other = tmp_path / "other"
    fps["a"].save(other / "a.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(other / "weights.safetensors"))
    before = snapshot(other)
    with pytest.raises(FuncnetError, match=r"weights\.safetensors is not a readable fingerprint") as info:
        FingerprintRegistry.build(other)
    assert str(other / "weights.safetensors") in str(info.value)
    assert snapshot(other) == before and not (other / "index.json").exists()
    with pytest.raises(FuncnetError, match="holds fingerprint files .* but no registry index"):
        FingerprintRegistry.create(other)


# --------------------------------------------------------------------------- ranking


def test_rank_puts_the_registered_model_first(reg, folders, fps):
    ranking = reg.rank(ModelRef(folders["a"]), **CMP)
    assert isinstance(ranking, Ranking) and ranking.names == ["a", "b"]
    name, best = ranking.best
    assert name == "a" and best.score == pytest.approx(1.0) and best.verdict == "derived"
    other = ranking.rows[1][1]
    assert other.score < 0.6 and other.verdict != "derived"
    frame = ranking.to_frame()
    assert list(frame["name"]) == ["a", "b"] and list(frame["rank"]) == [1, 2]
    assert {"score", "p_value", "verdict", "margin"} <= set(frame.columns)
    d = ranking.to_dict()
    assert d["best"] == "a" and [r["name"] for r in d["ranking"]] == ["a", "b"] and "pairs" not in d["ranking"][0]
    json.dumps(d)
    # a suspect fingerprint recorded on the same texts gives the same ranking
    by_fp = reg.rank(fps["a"], **CMP)
    assert by_fp.to_dict()["ranking"] == d["ranking"]


def test_rank_refuses_a_fingerprint_on_other_texts(reg, folders):
    other = fingerprint(ModelRef(folders["a"]).load(), TEXTS[:2], **KW)
    with pytest.raises(FuncnetError, match="registry entry 'a'"):
        reg.rank(other, **CMP)
    with pytest.raises(FuncnetError, match="unknown model 'nosuch'"):
        reg.rank("nosuch", **CMP)


def test_rank_on_threads_equals_in_process_exactly(reg, folders, fp_a_seed1):
    reg.add("a-seed1", fp_a_seed1)  # a second group: the suspect is fingerprinted with random_state=1 too
    suspect = ModelRef(folders["b"])
    here = reg.rank(suspect, **CMP)
    with ThreadPoolExecutor(2) as pool:
        there = reg.rank(suspect, executor=pool, chunk_size=1, **CMP)
    assert here.settings["n_groups"] == 2 and here.names[0] == "b"
    assert here.to_dict(n_pairs=100) == there.to_dict(n_pairs=100)
    assert all(np.array_equal(x.rho, y.rho) for (_, x), (_, y) in zip(here.rows, there.rows))
    assert set(here.names[1:]) == {"a", "a-seed1"}


def test_rank_refuses_an_empty_registry(tmp_path, fps):
    with pytest.raises(FuncnetError, match="holds no fingerprints"):
        FingerprintRegistry.create(tmp_path / "empty").rank(fps["a"])


# --------------------------------------------------------------------------- fingerprint_models


def test_fingerprint_models_on_threads_equals_in_process(folders, fps):
    refs = [ModelRef(folders["a"]), ModelRef(folders["b"])]
    with ThreadPoolExecutor(2) as pool:
        there = fingerprint_models(refs, TEXTS, executor=pool, **KW)
    assert list(there) == [r.spec for r in refs]  # a sequence is named by its specs, in order
    for name, ref_name in zip(("a", "b"), there):
        x, y = fps[name], there[ref_name]
        assert all(torch.equal(s, t) for s, t in zip(x.series, y.series)) and x.params == y.params
        assert y.model["name"] == ref_name


def test_fingerprint_models_refuses_bad_input_before_any_work(folders, monkeypatch):
    from tl_funcnet.fingerprint import record

    monkeypatch.setattr(record, "fingerprint", lambda *a, **k: pytest.fail("fingerprinted despite bad input"))
    with pytest.raises(FuncnetError, match="unknown model 'nosuch'"):
        fingerprint_models({"a": str(folders["a"]), "x": "nosuch"}, TEXTS, **KW)
    with pytest.raises(FuncnetError, match="listed twice"):
        fingerprint_models([str(folders["a"]), str(folders["a"])], TEXTS, **KW)
    with pytest.raises(FuncnetError, match="n_networks"):
        fingerprint_models([str(folders["a"])], TEXTS, n_networks=0)
    with pytest.raises(FuncnetError, match="concurrent.futures.Executor"):
        fingerprint_models([str(folders["a"])], TEXTS, executor=object(), **KW)
    with ThreadPoolExecutor(1) as pool, pytest.raises(FuncnetError, match="not loaded by tl_funcnet.models.load"):
        fingerprint_models({"x": rms_model(0)}, TEXTS, executor=pool, **KW)  # a model workers cannot load


def test_fingerprint_models_takes_loaded_models_in_process(folders, fps):
    out = fingerprint_models({"a": ModelRef(folders["a"]).load()}, TEXTS, **KW)
    assert same_fp(out["a"], fps["a"])


# --------------------------------------------------------------------------- fsspec


def test_memory_registry(fps):
    import fsspec

    url = f"memory://tlfn-{secrets.token_hex(4)}/reg"
    reg = FingerprintRegistry.create(url)
    reg.add_many(fps)
    again = FingerprintRegistry(url)
    assert again.location == url and again.names == ["a", "b"] and same_fp(again.get("a"), fps["a"])
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(url[len("memory://"):], detail=False)) == [
        "a.safetensors", "b.safetensors", "index.json"]
    with ThreadPoolExecutor(2) as pool:
        threaded = again.rank(fps["b"], executor=pool, chunk_size=1, **CMP)
    assert threaded.to_dict() == again.rank(fps["b"], **CMP).to_dict()
    pool = ProcessPoolExecutor(1)
    try:
        with pytest.raises(FuncnetError, match="lives in this process's memory"):
            again.rank(fps["b"], executor=pool, **CMP)
    finally:
        pool.shutdown()
    fs.pipe_file(url[len("memory://"):] + "/b.safetensors", b"changed")
    with pytest.raises(FormatError, match=f"{url}/b.safetensors: its SHA-256"):
        again.get("b")
