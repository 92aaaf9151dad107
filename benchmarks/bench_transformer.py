"""Timings for the Fig 7 transformer (not collected by pytest): one training step and one relocate.

    python benchmarks/bench_transformer.py [--threads N]

Training step = forward + MSE + lambda * connection_cost + backward + AdamW step, batch 64, sequence length 3,
d_model 32, 2 blocks, 1 head, MLP 128. Relocate: top_k 20 over every neuron layer. Prints medians.
"""
import argparse
import copy
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bimt_core import BioTransformer, connection_cost, relocate  # noqa: E402

COST = dict(weight_factor=2.0, l0=0.5, agg="mean")  # Fig 7's cost settings


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    model = BioTransformer(2, 2, d_model=32, n_blocks=2, n_heads=1, d_mlp=128, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    # One Fig 7 batch: tokens (0, x1), (y1, 0), (0, x2); targets y at the x tokens.
    w = torch.rand(64, 1, generator=g) * 2 - 1
    xs = torch.rand(64, 2, generator=g) * 2 + 1
    x = torch.zeros(64, 3, 2)
    x[:, 0, 1], x[:, 1, 0], x[:, 2, 1] = xs[:, 0], (w * xs)[:, 0], xs[:, 1]
    y = torch.zeros(64, 3, 2)
    y[:, 0, 0], y[:, 2, 0] = (w * xs)[:, 0], (w * xs)[:, 1]

    def step():
        loss = torch.nn.functional.mse_loss(model(x), y) + 1e-3 * connection_cost(model, **COST)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_step = median_seconds(step, args.repeats)
    copies = [copy.deepcopy(model) for _ in range(max(args.repeats // 10, 5) + 3)]
    swaps = []
    t_reloc = median_seconds(lambda: swaps.append(relocate(copies.pop(), 20, **COST)), len(copies) - 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"training step (batch 64, seq 3, d_model 32, 2 blocks, 1 head, MLP 128): {t_step * 1e3:.2f} ms")
    print(f"relocate (top_k 20): {t_reloc * 1e3:.1f} ms, {statistics.median(swaps):.0f} swaps")


if __name__ == "__main__":
    main()
