"""BioMLP.forward returns outputs in the caller's order through index_select (fast backward on CPU);
oracle: the same reordering written as advanced indexing, values and gradients."""
import torch
import torch.nn.functional as F

import bimt_core as bc


def test_forward_output_order_matches_advanced_indexing_after_output_swaps():
    g = torch.Generator().manual_seed(0)
    model = bc.BioMLP([8, 6, 5], in_fold=2, vocab_size=7, generator=g)
    model.swap("output", 0, 3)
    model.swap("output", 1, 4)
    x = torch.randint(7, (11, 2), generator=g)
    y = torch.randint(5, (11,), generator=g)

    out = model(x)
    F.cross_entropy(out, y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    ref = model.forward_internal(model.embed(x))[:, torch.argsort(model.out_perm)]
    F.cross_entropy(ref, y).backward()

    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for gp, p in zip(grads, model.parameters()):
        torch.testing.assert_close(gp, p.grad)
