"""Benchmark: fast vs brute-force relocate on the MNIST-shaped network (784-100-100-10, grids, ring outputs).

Not collected by pytest. Run: .venv/bin/python benchmarks/bench_swap.py
The brute force is the oracle of tests/helpers.py, which tests/test_core.py uses (the authors' procedure: for
every candidate swap, recompute the whole connection cost), run on a float64 copy so that rounding cannot fake a
decision.
Exits non-zero if the two procedures end in different networks.
"""
import copy
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import bimt_core as bc  # noqa: E402
from helpers import brute_force_relocate, float64_oracle  # noqa: E402

COST = dict(weight_factor=2.0, l0=0.5, agg="mean", last_layer_l0_only=True)  # the MNIST cost (notebooks/mnist.ipynb)
TOP_K = 30


def main():
    torch.set_num_threads(1)  # the default of all cores made a step 19x slower on a busy 2-core machine
    g = torch.Generator().manual_seed(0)
    model = bc.BioMLP([784, 100, 100, 10], geometry="grid", out_geometry="ring", fix_inputs=True, generator=g)
    x = torch.rand(1000, 784, generator=g)
    y = F.one_hot(torch.randint(10, (1000,), generator=g), 10).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(i):
        idx = torch.randint(1000, (100,), generator=g)
        loss = F.mse_loss(model(x[idx]), y[idx]) + 0.1 * bc.connection_cost(model, **COST)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(200):  # brief training: weights no longer i.i.d., so the swaps are real decisions
        step(i)
    t = time.perf_counter()
    for i in range(200):
        step(i)
    t_step = (time.perf_counter() - t) / 200

    oracle = float64_oracle(model)
    t = time.perf_counter()
    n_fast = bc.relocate(model, TOP_K, **COST)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    n_brute = brute_force_relocate(oracle, TOP_K, **COST)
    t_brute = time.perf_counter() - t

    sd, so = model.state_dict(), oracle.state_dict()
    identical = n_fast == n_brute and all(torch.equal(sd[k].to(so[k].dtype), so[k]) for k in sd)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, top_k={TOP_K}")
    print(f"swaps made: fast {n_fast}, brute force {n_brute}")
    print(f"one training step (batch 100, with connection cost): {t_step * 1e3:.2f} ms")
    print(f"one fast relocate = {t_fast / t_step:.1f} training steps; swapping every 500 steps costs "
          f"{100 * t_fast / (500 * t_step):.2f}% of training time")
    print(f"relocate: brute force {t_brute:.1f} s, fast {t_fast * 1e3:.1f} ms, speedup {t_brute / t_fast:.0f}x, "
          f"identical: {identical}")
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
