"""Training a tiny SAE with sae-lens's runner (a few steps, tiny model), and the save/load round trip."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError, UnknownSiteError
from tl_funcnet.sae import evaluate_sae, load_sae, sae_params, save_sae, splice, token_dataset, train_sae

SITE = "blocks.0.hook_resid_post"


_SIGNALS: dict[str, dict] = {}  # signal handlers around the fixture's training run


def _sentinel_handler(signum, frame):
    pass


@pytest.fixture(scope="module")
def trained(gpt2_tiny):
    import signal

    toks = torch.randint(0, 50, (48, 12), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in gpt2_tiny.state_dict().items()}
    previous_term = signal.signal(signal.SIGTERM, _sentinel_handler)  # a handler of the user's own
    try:
        _SIGNALS["before"] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        sae = train_sae(gpt2_tiny, SITE, toks, d_sae=32, k=4, training_tokens=2048, context_size=8,
                        train_batch_size_tokens=64, n_batches_in_buffer=8, store_batch_size_prompts=4, lr=3e-3,
                        random_state=0)
        _SIGNALS["after"] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    after = gpt2_tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is not trained
    return sae, toks


def test_train_sae_returns_an_inference_sae_for_the_site(trained, gpt2_tiny):
    from sae_lens import SAE, TopKSAE

    sae, toks = trained
    assert isinstance(sae, SAE) and isinstance(sae, TopKSAE)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (16, 32, 4)
    assert sae.cfg.metadata.hook_name == SITE
    assert not gpt2_tiny.training


def test_trained_sae_beats_an_untrained_one(trained, gpt2_tiny):
    from sae_lens import TopKSAE, TopKSAEConfig

    sae, toks = trained
    fresh = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4))
    ev_trained = evaluate_sae(gpt2_tiny, sae, toks, site=SITE, compute_ce=False).explained_variance
    ev_fresh = evaluate_sae(gpt2_tiny, fresh, toks, site=SITE, compute_ce=False).explained_variance
    assert ev_trained > ev_fresh + 0.05
    assert ev_trained > 0.2


def test_save_load_round_trip_in_sae_lens_format(trained, gpt2_tiny, tmp_path):
    sae, toks = trained
    path = save_sae(sae, tmp_path / "sae")
    assert (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()
    loaded = load_sae(path)
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    with splice(loaded).applied(gpt2_tiny):
        out = gpt2_tiny(toks[:2])
    with splice(sae_params(sae), site=SITE).applied(gpt2_tiny):
        torch.testing.assert_close(gpt2_tiny(toks[:2]), out)
    with pytest.raises(FuncnetError, match="cfg.json"):
        load_sae(tmp_path / "nowhere")


def test_token_dataset_rows_and_errors(gpt2_tiny):
    ds = token_dataset(gpt2_tiny, torch.arange(40).view(4, 10) % 50, 16)
    assert len(ds) == 2 and len(ds[0]["tokens"]) == 16
    with pytest.raises(FuncnetError, match="fewer than one context"):
        token_dataset(gpt2_tiny, torch.zeros(1, 4, dtype=torch.long), 16)


def test_train_sae_rejects_bad_settings(gpt2_tiny):
    toks = torch.zeros(4, 12, dtype=torch.long)
    with pytest.raises(FuncnetError, match="n_batches_in_buffer"):
        train_sae(gpt2_tiny, SITE, toks, context_size=8, train_batch_size_tokens=4096, n_batches_in_buffer=2)
    with pytest.raises(FuncnetError, match="unknown sae-lens architecture"):
        train_sae(gpt2_tiny, SITE, toks, architecture="nope")
    with pytest.raises(FuncnetError, match="k should be an integer >= 1"):
        train_sae(gpt2_tiny, SITE, toks, k=0)
    with pytest.raises(UnknownSiteError):
        train_sae(gpt2_tiny, "blocks.9.hook_resid_post", toks)


def test_train_sae_refuses_unknown_sae_kwargs(gpt2_tiny):
    toks = torch.zeros(4, 12, dtype=torch.long)
    with pytest.raises(FuncnetError, match=r"topk SAEs have no options \['bogus'\].*known: .*aux_loss_coefficient"):
        train_sae(gpt2_tiny, SITE, toks, bogus=1)
    with pytest.raises(FuncnetError, match=r"no options \['seed'\].*random_state"):
        train_sae(gpt2_tiny, SITE, toks, seed=1)  # the 1.0 name is random_state
    with pytest.raises(FuncnetError, match=r"no options \['d_in'\].*d_in comes from the site"):
        train_sae(gpt2_tiny, SITE, toks, d_in=8)
    with pytest.raises(FuncnetError, match=r"standard SAEs have no options \['k_sparse'\]"):
        train_sae(gpt2_tiny, SITE, toks, architecture="standard", k_sparse=3)


def test_save_sae_refuses_foreign_folders_and_replaces_only_with_overwrite(tmp_path):
    from tl_funcnet.errors import OverwriteError
    from sae_testing import make_sae

    first, second = make_sae("standard", hook_name=SITE, seed=1), make_sae("standard", hook_name=SITE, seed=2)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(OverwriteError, match="not a saved SAE"):
        save_sae(first, foreign)
    with pytest.raises(OverwriteError):
        save_sae(first, foreign, overwrite=True)  # overwrite never replaces what tl_funcnet did not write
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"] and (foreign / "todo.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OverwriteError):
        save_sae(first, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"

    (tmp_path / "empty").mkdir()
    assert save_sae(first, tmp_path / "empty") == tmp_path / "empty"  # an empty folder is fine
    path = save_sae(first, tmp_path / "sae")
    with pytest.raises(OverwriteError, match="overwrite=True"):
        save_sae(second, path)
    torch.testing.assert_close(load_sae(path).W_enc, first.W_enc)  # untouched
    save_sae(second, path, overwrite=True)
    torch.testing.assert_close(load_sae(path).W_enc, second.W_enc)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    (path / "extra.txt").write_text("y")
    with pytest.raises(OverwriteError, match="did not write"):
        save_sae(first, path, overwrite=True)
    assert (path / "extra.txt").exists()


def test_train_and_save_checks_every_target_before_training(gpt2_tiny, tmp_path, monkeypatch):
    import tl_funcnet.sae.train as train_mod
    from tl_funcnet.errors import OverwriteError
    from tl_funcnet.sae import train_and_save

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the targets were checked")

    monkeypatch.setattr(train_mod, "train_sae", no_training)
    (tmp_path / "blocks.1.hook_mlp_out").mkdir()
    (tmp_path / "blocks.1.hook_mlp_out" / "keep.txt").write_text("mine")
    with pytest.raises(OverwriteError, match="not a saved SAE"):
        train_and_save(gpt2_tiny, tmp_path, [SITE, "blocks.1.hook_mlp_out"], torch.zeros(4, 12, dtype=torch.long))
    assert not (tmp_path / SITE).exists()


def test_train_sae_restores_signal_handlers(trained):
    import signal

    # sae-lens's runner installs its own handlers; ours must be back afterwards, whatever they were
    assert _SIGNALS["after"] == _SIGNALS["before"]
    assert _SIGNALS["after"][signal.SIGTERM] is _sentinel_handler


def test_train_and_save_writes_one_loadable_sae_per_site(gpt2_tiny, tmp_path):
    from tl_funcnet.errors import OverwriteError
    from tl_funcnet.sae import train_and_save

    toks = torch.randint(0, 50, (32, 12), generator=torch.Generator().manual_seed(1))
    sites = [SITE, "blocks.1.hook_mlp_out"]
    times = train_and_save(gpt2_tiny, tmp_path, sites, toks, d_sae=16, k=2, training_tokens=512, context_size=8,
                           train_batch_size_tokens=64, n_batches_in_buffer=8, store_batch_size_prompts=4)
    assert set(times) == set(sites)
    for site in sites:
        sae = load_sae(tmp_path / site)
        assert sae.cfg.metadata.hook_name == site and sae.cfg.d_sae == 16
    with pytest.raises(OverwriteError, match="overwrite=True"):  # refused before any training
        train_and_save(gpt2_tiny, tmp_path, sites, toks, d_sae=16)


def test_cli_train_sae_rejects_bad_settings_before_loading(tmp_path, capsys):
    from tl_funcnet.cli import main

    assert main(["train-sae", "--model", str(tmp_path / "missing"), "--k", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--k" in capsys.readouterr().err and not (tmp_path / "o").exists()
