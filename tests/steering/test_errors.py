"""Bad input fails early with clear messages, and nothing is left attached."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import FuncnetError, ShapeError
from tl_funcnet.steering import SteeringVector, entropy_weighted, mean_difference, pca_direction, read_prompts

P = [[1, 2, 3], [4, 5, 6]]


def test_empty_prompt_sets(gpt2_tiny):
    with pytest.raises(FuncnetError, match="positive prompt set is empty"):
        mean_difference(gpt2_tiny, [], P, 0)
    with pytest.raises(FuncnetError, match="negative prompt set is empty"):
        mean_difference(gpt2_tiny, P, [], 0)
    with pytest.raises(FuncnetError, match="prompt 1 is empty"):
        mean_difference(gpt2_tiny, ["a", "  "], ["b", "c"], 0)


def test_unbalanced_paired_sets(gpt2_tiny):
    with pytest.raises(FuncnetError, match="unbalanced: 2 positive vs 1 negative"):
        mean_difference(gpt2_tiny, P, P[:1], 0)
    with pytest.raises(FuncnetError, match="unbalanced"):
        pca_direction(gpt2_tiny, P, P[:1], 0)
    assert mean_difference(gpt2_tiny, P, P[:1], 0, paired=False).d == 16


def test_layer_out_of_range(gpt2_tiny):
    with pytest.raises(FuncnetError, match="layer 2 is out of range for a model with 2 layers"):
        mean_difference(gpt2_tiny, P, P, 2)
    sv = SteeringVector(torch.ones(16), "blocks.0.hook_resid_post")
    with pytest.raises(FuncnetError, match="layer 5 is out of range"):
        sv.to_intervention(1.0, layers=[5], model=gpt2_tiny)


def test_wrong_width_vector(gpt2_tiny, tokens):
    sv = SteeringVector(torch.ones(12), "blocks.0.hook_resid_post")
    with pytest.raises(ShapeError, match="width 12"):
        sv.to_intervention(1.0, model=gpt2_tiny)
    for pos in ("all", "generated"):
        with pytest.raises(ShapeError, match="12"):
            with sv.to_intervention(1.0, pos).applied(gpt2_tiny):
                pass


def test_bad_options(gpt2_tiny):
    sv = SteeringVector(torch.ones(16), "blocks.0.hook_resid_post")
    with pytest.raises(FuncnetError, match="pos should be one of"):
        sv.to_intervention(1.0, "middle")
    with pytest.raises(FuncnetError, match="finite"):
        sv.to_intervention(float("nan"))
    with pytest.raises(FuncnetError, match="reduce"):
        mean_difference(gpt2_tiny, P, P, 0, reduce="max")
    with pytest.raises(FuncnetError, match="entropies"):
        entropy_weighted(gpt2_tiny, P, 0, entropies=[0.0, 0.0])
    with pytest.raises(FuncnetError, match="one entropy per example"):
        entropy_weighted(gpt2_tiny, P, 0, entropies=[1.0, 2.0, 3.0])
    with pytest.raises(ShapeError):
        SteeringVector(torch.ones(2, 3), "blocks.0.hook_resid_post")


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
