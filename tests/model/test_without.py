"""Removing a block (GPT.without, for the layer removal of run/removal.py): the model without
block l is the model whose block l adds nothing to the stream, and everything else, the
blocks' own l included, stays as it was."""

from __future__ import annotations

import pytest
import torch

from support.models import gpt, randomize


def silenced(model, layer: int):
    """The model with block `layer`'s residual projections (attention W_o, MLP W2, weights and
    biases) at zero: for a placement that adds A(.) and M(.) to the stream unnormalized, that
    block passes its input on unchanged."""
    block = model.blocks[layer - 1]
    with torch.no_grad():
        for proj in (block.attn.proj, block.mlp.proj):
            proj.weight.zero_()
            proj.bias.zero_()
    return model


@pytest.mark.parametrize("placement", ["pre", "lns"])
@pytest.mark.parametrize("layer", [1, 2, 4])
def test_removing_a_block_is_silencing_it(placement, layer):
    torch.manual_seed(0)
    model = gpt(placement, depth=4).eval()
    randomize(model)
    idx = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        full = model(idx)[0]
        with model.without(layer):
            removed = model(idx)[0]
        assert torch.equal(model(idx)[0], full)  # put back on leaving
        reference = silenced(model, layer)(idx)[0]
    torch.testing.assert_close(removed, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(removed, full, atol=1e-3)


def test_removing_a_block_of_a_two_stream_placement_passes_both_on():
    """ResiDual: the pair (post-norm stream, dual stream) enters the next block as it left
    the one before; composed by hand from the blocks that remain."""
    torch.manual_seed(1)
    model = gpt("resi_dual", depth=3).eval()
    randomize(model)
    idx = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        stream = model.blocks[0].enter(model.embed(idx))
        for block in (model.blocks[0], model.blocks[2]):
            stream = block(stream)
        by_hand = model.lm_head(model.blocks[-1].exit(stream, model.norm_f))
        with model.without(2):
            removed = model(idx)[0]
    torch.testing.assert_close(removed, by_hand[0])  # the member dimension of one dropped


def test_losses_and_limits_of_removal():
    model = gpt("pre", depth=2).eval()
    idx = torch.randint(0, 128, (2, 16))
    with torch.no_grad(), model.without(1, 2):  # no block at all: the head reads the embedding
        _, loss = model(idx, idx)
        by_hand = torch.nn.functional.cross_entropy(
            model.lm_head(model.norm_f(model.embed(idx)))[0].flatten(0, 1), idx.flatten()
        )
    torch.testing.assert_close(loss, by_hand)
    assert model.removed == frozenset()
    for bad in (0, 3):
        with pytest.raises(ValueError, match="within 1 .. 2"), model.without(bad):
            pass
