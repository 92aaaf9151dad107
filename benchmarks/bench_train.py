"""Benchmark: bimt_core.train against a bare PyTorch loop on the same model, side by side in one process.

Not collected by pytest. Run: .venv/bin/python benchmarks/bench_train.py [--threads N]
The bare loop is the least a user would write for the same training: the model's forward, the task loss
plus lambda * sum |W| * (A d + l0) with the coefficients computed once, backward, and the same AdamW.
train() adds the lambda schedule, the bias-penalty phase, the NaN guard, evaluation, the progress bar and
the swap passes. Both run in alternating rounds; the ratio of medians is printed for each network.
Then the same train() at 1 and 2 threads, to back the thread default (BIMTConfig.threads).
"""
import argparse
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import bimt_core as bc  # noqa: E402


def cases():
    """(name, model maker, config, train data, loss) for the three network sizes of the paper, and the MNIST
    network's lambda-0 baseline (Fig 8), which train() runs without computing the cost's gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 4, generator=g) * 2 - 1
    sym = (x, torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(torch.pi * x[:, 3])], 1))
    px = torch.rand(4000, 784, generator=g)
    mnist = (px, F.one_hot(torch.randint(10, (4000,), generator=g), 10).float())
    w, xs = torch.rand(8000, generator=g) * 2 - 1, torch.rand(8000, 2, generator=g) * 2 + 1
    tok = torch.zeros(8000, 3, 2)
    tok[:, 0, 1], tok[:, 1, 0], tok[:, 2, 1] = xs[:, 0], w * xs[:, 0], xs[:, 1]
    seq = (tok, w[:, None] * xs)
    return [
        ("[4,20,20,2], full batch 100", lambda: bc.BioMLP([4, 20, 20, 2], generator=torch.Generator().manual_seed(0)),
         bc.BIMTConfig(), sym, F.mse_loss),
        ("784-100-100-10 (1D), batch 100", lambda: bc.BioMLP([784, 100, 100, 10],
                                                              generator=torch.Generator().manual_seed(0)),
         bc.BIMTConfig(lr=1e-3, lam=0.01, weight_factor=2.0, l0=0.5, agg="mean", bias_penalty_from=None,
                       last_layer_l0_only=True, top_k=30, swap_every=500, batch_size=100, eval_every=250),
         mnist, F.mse_loss),
        ("784-100-100-10, lambda 0", lambda: bc.BioMLP([784, 100, 100, 10], generator=torch.Generator().manual_seed(0)),
         bc.BIMTConfig(lr=1e-3, lam=0.0, swap=False, batch_size=100, eval_every=250), mnist, F.mse_loss),
        ("Fig 7 transformer, batch 64", lambda: bc.BioTransformer(2, 2, generator=torch.Generator().manual_seed(0)),
         bc.BIMTConfig(lr=1e-3, lam=1e-3, weight_factor=2.0, l0=0.5, agg="mean", bias_penalty_from=None,
                       top_k=20, swap_every=200, batch_size=64),
         seq, lambda out, y: F.mse_loss(out[:, [0, 2], 0], y)),
    ]


def bare_loop(model, cfg, data, loss_fn, steps):
    """The same maths without train()'s bookkeeping; returns seconds per step."""
    x, y = data
    gen = torch.Generator().manual_seed(cfg.seed)
    kw = cfg.cost_kwargs(0)
    lins = bc._linears(model)
    coefs = [(lin.weight, kw["weight_factor"] * lin.dist + kw["l0"], 1 / lin.weight.numel() if cfg.agg == "mean" else 1.0)
             for lin in lins]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, foreach=True)
    t = time.perf_counter()
    for _ in range(steps):
        if cfg.batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
            xb, yb = x[idx], y[idx]
        loss = loss_fn(model(xb), yb)
        if cfg.lam:  # at lambda 0 the bare loop is plain training
            loss = loss + cfg.lam * sum(s * (w.abs() * c).sum() for w, c, s in coefs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def with_train(model, cfg, data, loss_fn, steps):
    from dataclasses import replace
    t = time.perf_counter()
    bc.train(model, replace(cfg, steps=steps, threads=None), data, data, loss_fn, progress=False)
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000, help="steps per timed run (a multiple of 500 keeps swaps in)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.rounds} rounds of "
          f"{args.steps} steps each, alternating; medians")
    for name, make, cfg, data, loss_fn in cases():
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(bare_loop(make(), cfg, data, loss_fn, args.steps))
            ours.append(with_train(make(), cfg, data, loss_fn, args.steps))
        b, o = statistics.median(bare), statistics.median(ours)
        ratios = sorted(ot / bt for ot, bt in zip(ours, bare))
        print(f"{name:32s} bare {b * 1e3:6.3f} ms/step   train {o * 1e3:6.3f} ms/step   "
              f"ratio {o / b:.2f}x (per round {ratios[0]:.2f}-{ratios[-1]:.2f})")
    print("threads, train() per step:")
    for name, make, cfg, data, loss_fn in cases():
        t = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            t[n] = statistics.median(with_train(make(), cfg, data, loss_fn, args.steps // 2) for _ in range(3))
        torch.set_num_threads(1)
        print(f"{name:32s} 1 thread {t[1] * 1e3:6.3f} ms   2 threads {t[2] * 1e3:6.3f} ms   "
              f"2 threads / 1 thread {t[2] / t[1]:.2f}x")


if __name__ == "__main__":
    main()
