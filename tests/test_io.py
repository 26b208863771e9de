"""tl_funcnet._io: saves that are atomic and never replace what they did not write.

The rules are checked here on a test kind, and on each real writer (Intervention.save, models.save,
Activations.save) through ``tl_testing.check_save_rules``, in this file and in the writers' own folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tl_testing import check_save_rules, dead_pid, make_gpt2_style, snapshot
from tl_funcnet import _io
from tl_funcnet._io import (Kind, atomic_dir, atomic_file, atomic_path, check_target, field, read_json, remove_stale,
                            tensor_digest, write_json_atomic)
from tl_funcnet.errors import FormatError, FuncnetError, OverwriteError

THING = Kind("thing", "manifest.json", "test.thing", ("manifest.json", "data_*.bin"))
BLOB = Kind("blob", recognize=lambda p: p.is_file() and p.read_bytes().startswith(b"BLOB"))


def write_thing(path, payload: bytes = b"x", *, overwrite: bool = False):
    with atomic_dir(path, THING, overwrite=overwrite) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"format": THING.format}))
        (tmp / "data_0.bin").write_bytes(payload)
    return path


def write_blob(path, payload: bytes = b"", *, overwrite: bool = False):
    with atomic_file(path, BLOB, overwrite=overwrite) as tmp:
        tmp.write_bytes(b"BLOB" + payload)
    return path


def temp_names(folder):
    return sorted(p.name for p in folder.iterdir() if ".tlfn-" in p.name)


# --------------------------------------------------------------------------- Kind


def test_kind_holds_by_manifest_format(tmp_path):
    write_thing(tmp_path / "t")
    assert THING.holds(tmp_path / "t")
    for text in ('{"format": "other"}', "[1, 2]", "{not json", ""):
        (tmp_path / "t" / "manifest.json").write_text(text)
        assert not THING.holds(tmp_path / "t")
    (tmp_path / "t" / "manifest.json").unlink()
    assert not THING.holds(tmp_path / "t")
    assert not THING.holds(tmp_path / "absent")


def test_kind_recognize_replaces_the_manifest_test(tmp_path):
    (tmp_path / "a").write_bytes(b"BLOB123")
    (tmp_path / "b").write_bytes(b"other")
    assert BLOB.holds(tmp_path / "a") and not BLOB.holds(tmp_path / "b")


def test_kind_foreign_lists_what_the_kind_does_not_write(tmp_path):
    write_thing(tmp_path / "t")
    folder = tmp_path / "t"
    assert THING.foreign(folder) == []
    (folder / "data_7.bin").write_bytes(b"")  # matches a pattern of the kind
    (folder / ".t.tlfn-1-abcd.tmp").write_bytes(b"")  # a temporary name of ours
    assert THING.foreign(folder) == []
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    assert THING.foreign(folder) == ["notes.txt", "sub"]


# --------------------------------------------------------------------------- check_target (folders)


def test_check_target_accepts_absent_and_empty_paths_and_writes_nothing(tmp_path):
    assert check_target(tmp_path / "new" / "deeper", THING) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert check_target(tmp_path / "empty", THING) == tmp_path / "empty"
    assert check_target(str(tmp_path / "empty"), THING) == tmp_path / "empty"


def test_check_target_same_kind_needs_overwrite(tmp_path):
    write_thing(tmp_path / "t")
    with pytest.raises(OverwriteError, match=r"already holds a saved thing; pass overwrite=True"):
        check_target(tmp_path / "t", THING)
    assert check_target(tmp_path / "t", THING, overwrite=True) == tmp_path / "t"


def test_check_target_refuses_same_kind_with_foreign_files_even_with_overwrite(tmp_path):
    write_thing(tmp_path / "t")
    (tmp_path / "t" / "thesis.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OverwriteError, match=r"files tl_funcnet did not write \(\['thesis.txt'\]\)"):
            check_target(tmp_path / "t", THING, overwrite=overwrite)


def test_check_target_refuses_foreign_folders_files_and_other_kinds(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("mine")
    other = Kind("other", "manifest.json", "test.other", ("manifest.json",))
    with atomic_dir(tmp_path / "o", other) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"format": "test.other"}))
    (tmp_path / "f").write_text("plain")
    for path, match in [(user, r"is not a saved thing \(it holds \['thesis.txt'\]\)"),
                        (tmp_path / "o", "is not a saved thing"),
                        (tmp_path / "f", "a file is there and a thing is saved as a folder"),
                        (tmp_path / "f" / "below", r"f is a file, not a folder")]:
        for overwrite in (False, True):
            with pytest.raises(OverwriteError, match=match) as info:
                check_target(path, THING, overwrite=overwrite)
            assert isinstance(info.value, FuncnetError) and isinstance(info.value, FileExistsError)
    assert (user / "thesis.txt").read_text() == "mine" and (tmp_path / "f").read_text() == "plain"


def test_check_target_refuses_a_symlink(tmp_path):
    write_thing(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(OverwriteError):
        check_target(tmp_path / "link", THING, overwrite=True)


def test_check_target_refuses_paths_without_a_name(tmp_path, monkeypatch):
    """'.', '..' and '/' cannot be replaced by a rename (the current folder would vanish under the process)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for path in (".", "sub/..", "", "/", tmp_path / "sub" / ".."):
        with pytest.raises(FuncnetError, match="name the folder to create"):
            check_target(path, THING)
        with pytest.raises(FuncnetError, match="name the folder to create"):
            write_thing(path)
    with pytest.raises(FuncnetError, match="name the file to create"):
        write_blob(".")
    assert os.listdir(tmp_path) == ["sub"] and os.getcwd() == str(tmp_path)


def test_check_target_overwrite_must_be_a_bool(tmp_path):
    with pytest.raises(FuncnetError, match="overwrite should be True or False"):
        check_target(tmp_path / "x", THING, overwrite="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- check_target (files)


def test_check_target_file_kind(tmp_path):
    assert check_target(tmp_path / "b", BLOB, folder=False) == tmp_path / "b"
    write_blob(tmp_path / "b")
    with pytest.raises(OverwriteError, match="already holds a blob; pass overwrite=True"):
        check_target(tmp_path / "b", BLOB, folder=False)
    assert check_target(tmp_path / "b", BLOB, overwrite=True, folder=False) == tmp_path / "b"
    (tmp_path / "foreign").write_bytes(b"mine")
    (tmp_path / "dir").mkdir()
    for path, match in [(tmp_path / "foreign", "is not a blob file"), (tmp_path / "dir", "a folder is there")]:
        with pytest.raises(OverwriteError, match=match):
            check_target(path, BLOB, overwrite=True, folder=False)


# --------------------------------------------------------------------------- atomic_dir / atomic_file


def test_atomic_dir_writes_only_on_success(tmp_path):
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_dir(tmp_path / "t", THING) as tmp:
            (tmp / "manifest.json").write_text("{}")
            raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []
    write_thing(tmp_path / "t", b"1")
    before = snapshot(tmp_path / "t")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "t", THING, overwrite=True) as tmp:
            (tmp / "data_0.bin").write_bytes(b"2")
            raise RuntimeError("killed")
    assert snapshot(tmp_path / "t") == before and temp_names(tmp_path) == []
    write_thing(tmp_path / "t", b"2", overwrite=True)
    assert (tmp_path / "t" / "data_0.bin").read_bytes() == b"2" and temp_names(tmp_path) == []


def test_atomic_dir_creates_missing_parents(tmp_path):
    write_thing(tmp_path / "a" / "b" / "t")
    assert THING.holds(tmp_path / "a" / "b" / "t")


def test_atomic_dir_rechecks_before_renaming(tmp_path):
    """Something the user put at the target while the artefact was being written is not replaced."""
    target = tmp_path / "t"
    with pytest.raises(OverwriteError):
        with atomic_dir(target, THING) as tmp:
            (tmp / "manifest.json").write_text(json.dumps({"format": THING.format}))
            target.mkdir()
            (target / "thesis.txt").write_text("mine")
    assert os.listdir(target) == ["thesis.txt"] and temp_names(tmp_path) == []


def test_atomic_file_writes_only_on_success(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "b", BLOB) as tmp:
            tmp.write_bytes(b"BLOB")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_blob(tmp_path / "b", b"1")
    with pytest.raises(OverwriteError):
        write_blob(tmp_path / "b", b"2")
    write_blob(tmp_path / "b", b"2", overwrite=True)
    assert (tmp_path / "b").read_bytes() == b"BLOB2" and temp_names(tmp_path) == []


def test_save_rules_on_a_folder_kind(tmp_path):
    check_save_rules(lambda p, o: write_thing(p, b"a", overwrite=o), lambda p, o: write_thing(p, b"b", overwrite=o),
                     tmp_path)


def test_save_rules_on_a_file_kind(tmp_path):
    check_save_rules(lambda p, o: write_blob(p, b"a", overwrite=o), lambda p, o: write_blob(p, b"b", overwrite=o),
                     tmp_path, folder=False)


# --------------------------------------------------------------------------- stale temporaries


def test_remove_stale_removes_only_dead_processes_leftovers_of_that_target(tmp_path):
    dead = dead_pid()
    target = tmp_path / "t"
    gone = [tmp_path / f".t.tlfn-{dead}-aaaa.tmp", tmp_path / f".t.tlfn-{dead}-bbbb.old"]
    gone[0].mkdir()
    (gone[0] / "x").write_bytes(b"half")
    gone[1].write_bytes(b"old")
    kept = [tmp_path / f".t.tlfn-{os.getpid()}-cccc.tmp", tmp_path / f".t.tlfn-{os.getppid()}-dddd.old",
            tmp_path / f".u.tlfn-{dead}-eeee.tmp", tmp_path / f".t.tlfn-{dead}-ffff.bak",
            tmp_path / f".t.tlfn-x{dead}-gggg.tmp", tmp_path / "t.tmp"]
    for p in kept:
        p.write_bytes(b"keep")
    remove_stale(target)
    assert not any(p.exists() for p in gone)
    assert all(p.read_bytes() == b"keep" for p in kept)
    remove_stale(tmp_path / "no" / "such" / "parent")  # nothing to do, no error


def test_pid_alive():
    assert _io._pid_alive(os.getpid()) and _io._pid_alive(os.getppid())
    assert not _io._pid_alive(dead_pid())


def test_a_save_removes_stale_leftovers_of_its_target(tmp_path):
    dead = dead_pid()
    stale = tmp_path / f".t.tlfn-{dead}-aaaa.tmp"
    stale.mkdir()
    live = tmp_path / f".t.tlfn-{os.getpid()}-bbbb.tmp"
    live.mkdir()
    write_thing(tmp_path / "t")
    assert not stale.exists() and live.exists()


# --------------------------------------------------------------------------- files tl_funcnet owns


def test_write_json_atomic_and_atomic_path(tmp_path):
    f = tmp_path / "sub" / "state.json"
    write_json_atomic(f, {"a": 1})
    assert json.loads(f.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json_atomic(f, {"a": object()})  # fails before touching the file
    assert json.loads(f.read_text()) == {"a": 1}
    write_json_atomic(f, {"t": torch.float32}, default=str)
    assert json.loads(f.read_text()) == {"t": "torch.float32"}
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert json.loads(f.read_text()) == {"t": "torch.float32"} and temp_names(f.parent) == []


def test_read_json_errors_name_the_file(tmp_path):
    f = tmp_path / "m.json"
    with pytest.raises(FormatError, match=r"m\.json is missing; expected a manifest"):
        read_json(f, "a manifest")
    f.write_text("{cut")
    with pytest.raises(FormatError, match=r"m\.json is not valid JSON"):
        read_json(f, "a manifest")
    f.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_json(f, "a manifest")
    f.write_text("[1]")
    with pytest.raises(FormatError, match=r"holds a JSON list, expected an object \(a manifest\)"):
        read_json(f, "a manifest")
    f.write_text('{"k": 1}')
    assert read_json(f, "a manifest") == {"k": 1}


def test_field_checks_presence_and_type():
    data = {"n": 3, "flag": True, "name": "x", "ratio": 0.5}
    assert field(data, "n", int, "f.json") == 3
    assert field(data, "ratio", (int, float), "f.json") == 0.5
    assert field(data, "flag", bool, "f.json") is True
    with pytest.raises(FormatError, match=r"f\.json: the key 'missing' is missing"):
        field(data, "missing", int, "f.json")
    with pytest.raises(FormatError, match=r"f\.json: 'name' should be int, got str"):
        field(data, "name", int, "f.json")
    with pytest.raises(FormatError, match=r"'flag' should be int, got bool"):
        field(data, "flag", int, "f.json")  # True is an int to Python, not to a file format


def test_tensor_digest_covers_names_dtypes_shapes_and_bytes():
    a = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.zeros(0), "z": torch.tensor([1, 2])}
    base = tensor_digest(a)
    assert tensor_digest(dict(reversed(list(a.items())))) == base  # order of the mapping does not matter
    assert tensor_digest({**a, "x": a["x"].t().contiguous().t()}) == base  # layout does not either
    flipped = a["x"].clone()
    flipped.view(torch.int32)[0, 0] ^= 1  # one bit
    variants = [{**a, "x": flipped}, {**a, "x": a["x"].double()}, {**a, "x": a["x"].reshape(3, 2)},
                {"w": a["x"], "y": a["y"], "z": a["z"]}, {**a, "y": torch.zeros(1)}]
    digests = {tensor_digest(v) for v in variants}
    assert base not in digests and len(digests) == len(variants)


# --------------------------------------------------------------------------- every writer follows the rules


def test_save_rules_intervention_save(tmp_path):
    from tl_funcnet.hooks import scale, steer

    a, b = steer("blocks.0.hook_resid_post", torch.ones(16)), scale("blocks.0.hook_resid_post", 2.0)
    check_save_rules(lambda p, o: a.save(p, overwrite=o), lambda p, o: b.save(p, overwrite=o), tmp_path)


def test_save_rules_models_save(tmp_path):
    from tl_funcnet.models import save

    a, b = make_gpt2_style(seed=0, n_layers=1), make_gpt2_style(seed=1, n_layers=1)
    check_save_rules(lambda p, o: save(a, p, overwrite=o), lambda p, o: save(b, p, overwrite=o), tmp_path)


def test_save_rules_activations_save(tmp_path):
    from tl_funcnet.activations import Activations

    def acts(seed):
        g = torch.Generator().manual_seed(seed)
        return Activations({"s": torch.randn(5, 3, generator=g)}, torch.arange(5), torch.tensor([0, 2, 5]))

    a, b = acts(0), acts(1)
    check_save_rules(lambda p, o: a.save(p, overwrite=o), lambda p, o: b.save(p, overwrite=o), tmp_path)


_KILLED_SAVE = """
import os, sys, time
import safetensors.torch as st
from tl_testing import make_gpt2_style
from tl_funcnet.models import save

real = st.save_file
def slow(tensors, path, *args, **kwargs):
    real(tensors, path, *args, **kwargs)   # the weights are on disk in the temporary folder ...
    print("written", flush=True)
    time.sleep(60)                          # ... and the process dies here, before the rename
st.save_file = slow
save(make_gpt2_style(), sys.argv[1], overwrite=True)
"""


def test_a_save_killed_with_sigkill_leaves_the_old_artefact_and_its_leftovers_are_cleaned(tmp_path):
    import signal
    import subprocess
    import sys

    from tl_funcnet.models import load, save

    target = tmp_path / "model"
    save(make_gpt2_style(seed=3), target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_SAVE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True,
                          env=env) as proc:
        assert proc.stdout.readline().strip() == "written"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert leftovers, "the killed save should have left its temporary folder"
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before  # the old model is intact
    load(target)
    save(make_gpt2_style(seed=4), target, overwrite=True)  # the next save to the same place cleans up
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.py", "model"]
