"""Hook names in both forms without a model: two spellings of one hook point are one site for ``|``."""

from __future__ import annotations

import pytest
import torch

from tl_funcnet.errors import SiteConflictError
from tl_funcnet.hooks import ablate, capture, steer
from tl_funcnet.hooks.names import site_keys

pytestmark = pytest.mark.bridge


def test_site_keys_join_the_two_spellings_of_a_hook_point():
    assert "blocks.3.mlp.out.hook_in" in site_keys("blocks.3.mlp.hook_post")
    assert "blocks.3.mlp.hook_post" in site_keys("blocks.3.mlp.out.hook_in")
    assert "blocks.0.hook_resid_post" in site_keys("blocks.0.hook_out")
    assert "blocks.0.hook_out.hook_sae_acts_post" in site_keys("blocks.0.hook_resid_post.hook_sae_acts_post")
    assert site_keys("hook_embed") == {"hook_embed"}
    assert not site_keys("blocks.1.hook_resid_post") & site_keys("blocks.0.hook_resid_post")


def test_join_refuses_two_writers_of_one_hook_point_spelled_two_ways():
    with pytest.raises(SiteConflictError, match="blocks.3.mlp"):
        ablate("blocks.3.mlp.hook_post", units=[1]) | ablate("blocks.3.mlp.out.hook_in", units=[2])
    with pytest.raises(SiteConflictError):
        steer("blocks.2.hook_out", torch.ones(4)) | capture("blocks.2.hook_resid_post", {})
    both = ablate("blocks.3.mlp.hook_post", units=[1]) | steer("blocks.4.hook_out", torch.ones(4))
    assert len(both) == 2
