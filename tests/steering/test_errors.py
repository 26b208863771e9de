"""Bad input fails early with clear messages, and nothing is left attached."""

from __future__ import annotations

import pytest
import torch

from tl_testing import count_hooks
from tl_funcnet.errors import FuncnetError, ShapeError, UnknownSiteError
from tl_funcnet.steering import (SteeringVector, entropy_weighted, generate, mean_difference, mean_differences,
                                 pca_direction, read_prompts)

P = [[1, 2, 3], [4, 5, 6]]
SITE = "blocks.0.hook_resid_post"


def test_empty_prompt_sets(gpt2_tiny):
    with pytest.raises(FuncnetError, match="positive prompt set is empty"):
        mean_difference(gpt2_tiny, [], P, SITE)
    with pytest.raises(FuncnetError, match="negative prompt set is empty"):
        mean_difference(gpt2_tiny, P, [], SITE)
    with pytest.raises(FuncnetError, match="prompt 1 is empty"):
        mean_difference(gpt2_tiny, ["a", "  "], ["b", "c"], SITE)
    with pytest.raises(FuncnetError, match="list of strings"):
        mean_difference(gpt2_tiny, "one prompt", P, SITE)


def test_unbalanced_paired_sets(gpt2_tiny):
    with pytest.raises(FuncnetError, match="unbalanced: 2 positive vs 1 negative"):
        mean_difference(gpt2_tiny, P, P[:1], SITE)
    with pytest.raises(FuncnetError, match="unbalanced"):
        pca_direction(gpt2_tiny, P, P[:1], SITE)
    with pytest.raises(FuncnetError, match="unbalanced"):
        mean_differences(gpt2_tiny, P, P[:1])
    assert mean_difference(gpt2_tiny, P, P[:1], SITE, paired=False).d == 16


def test_unknown_sites_and_layers_out_of_range(gpt2_tiny):
    with pytest.raises(UnknownSiteError, match="Did you mean"):
        mean_difference(gpt2_tiny, P, P, "blocks.2.hook_resid_post")
    with pytest.raises(FuncnetError, match="sites should be a hook name"):
        mean_difference(gpt2_tiny, P, P, 0)  # the old layer-number form
    with pytest.raises(FuncnetError, match=r"layers \[2\] are out of range; the model has 2 layers"):
        mean_differences(gpt2_tiny, P, P, layers=[2])
    sv = SteeringVector(torch.ones(16), SITE)
    with pytest.raises(FuncnetError, match=r"layers \[5\] are out of range"):
        sv.to_intervention(1.0, layers=[5], model=gpt2_tiny)
    with pytest.raises(UnknownSiteError):  # without the model the site is checked when attached
        with sv.to_intervention(1.0, layers=[5]).applied(gpt2_tiny):
            pass
    assert count_hooks(gpt2_tiny) == 0


def test_wrong_width_vector(gpt2_tiny, tokens):
    sv = SteeringVector(torch.ones(12), SITE)
    with pytest.raises(ShapeError, match="width 12"):
        sv.to_intervention(1.0, model=gpt2_tiny)
    for pos in (None, "last", "generated", "from_last"):
        with pytest.raises(ShapeError, match="12"):
            with sv.to_intervention(1.0, pos).applied(gpt2_tiny):
                pass
        assert count_hooks(gpt2_tiny) == 0


def test_bad_positions(gpt2_tiny):
    sv = SteeringVector(torch.ones(16), SITE)
    with pytest.raises(FuncnetError, match=r"pos should be None \(every position\)") as err:
        sv.to_intervention(1.0, "middle")
    assert "every position is pos=None" not in str(err.value)  # the hint is for "all" only
    with pytest.raises(FuncnetError, match=r"got 'all' \(every position is pos=None\)"):
        sv.to_intervention(1.0, "all")
    with pytest.raises(FuncnetError, match="every position is pos=None"):
        generate(gpt2_tiny, torch.tensor([[1, 2, 3]]), sv, pos="all", return_tokens=True)
    with pytest.raises(FuncnetError, match="prompt_len"):
        sv.to_intervention(1.0, "generated", prompt_len=0)
    with pytest.raises(FuncnetError, match="pos"):
        sv.to_intervention(1.0, [1.5])  # positions are integers, never rounded
    with pytest.raises(FuncnetError, match="pos"):
        sv.to_intervention(1.0, True)
    assert count_hooks(gpt2_tiny) == 0


def test_bad_options(gpt2_tiny):
    sv = SteeringVector(torch.ones(16), SITE)
    with pytest.raises(FuncnetError, match="finite"):
        sv.to_intervention(float("nan"))
    with pytest.raises(FuncnetError, match="normalize"):
        sv.to_intervention(1.0, normalize="yes")
    with pytest.raises(FuncnetError, match="reduce"):
        mean_difference(gpt2_tiny, P, P, SITE, reduce="max")
    with pytest.raises(FuncnetError, match="entropies"):
        entropy_weighted(gpt2_tiny, P, SITE, entropies=[0.0, 0.0])
    with pytest.raises(FuncnetError, match="one entropy per example"):
        entropy_weighted(gpt2_tiny, P, SITE, entropies=[1.0, 2.0, 3.0])
    with pytest.raises(FuncnetError, match="at least 2 examples"):
        entropy_weighted(gpt2_tiny, P[:1], SITE)
    with pytest.raises(ShapeError):
        SteeringVector(torch.ones(2, 3), SITE)
    with pytest.raises(FuncnetError, match="NaN"):
        SteeringVector(torch.tensor([1.0, float("nan")]), SITE)


def test_read_prompts_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    (tmp_path / "b.jsonl").write_text('"x"\n{"text": "y"}\n{"prompt": "z"}\n')
    (tmp_path / "c.jsonl").write_text('{"foo": 1}\n')
    (tmp_path / "d.txt").write_text("\n\n")
    assert read_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert read_prompts(tmp_path / "b.jsonl") == ["x", "y", "z"]
    with pytest.raises(FuncnetError, match="line 1"):
        read_prompts(tmp_path / "c.jsonl")
    with pytest.raises(FuncnetError, match="no prompts"):
        read_prompts(tmp_path / "d.txt")
    with pytest.raises(FuncnetError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
