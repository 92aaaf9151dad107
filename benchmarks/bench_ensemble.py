"""Benchmark: one ensemble of E members (bimt_ensemble.train_ensemble) against E single bc.train runs.

Not collected by pytest. Run: python benchmarks/bench_ensemble.py [--members 10] [--rounds 2] [--only fig3 ...]
For the network shapes, costs, batches and swap intervals of Figs 3-8 (synthetic data of the papers' sizes),
both sides train the same E seeds for the same steps, swaps included, in alternating rounds in one process
with torch pinned to one thread. Times are this process's CPU time, so that other processes competing
for the cores do not count. Printed: milliseconds per step per member on each side and the throughput
ratio (E singles' time / the ensemble's time), the median of the rounds and its range. Each side first runs
two untimed steps (imports, and the ensemble's one-off check of bmm against mm per matrix shape).
"""
import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import bimt_core as bc  # noqa: E402
import bimt_ensemble as be  # noqa: E402

MEAN = dict(agg="mean", weight_factor=2.0, l0=0.5)  # the cost of Figs 5-8


def tokens(p: int, n: int, g: torch.Generator) -> tuple:
    pairs = torch.randint(p, (n, 2), generator=g)
    return pairs, pairs.sum(1) % p


def sequences(n: int, g: torch.Generator) -> tuple:
    """Fig 7's in-context regression: tokens (0, x1), (w x1, 0), (0, x2) -> targets (w x1, w x2)."""
    w, x = torch.rand(n, generator=g) * 2 - 1, torch.rand(n, 2, generator=g) * 2 + 1
    tok = torch.zeros(n, 3, 2)
    tok[:, 0, 1], tok[:, 1, 0], tok[:, 2, 1] = x[:, 0], w * x[:, 0], x[:, 1]
    return tok, w[:, None] * x


def figures(steps: int) -> dict:
    """name -> (make_model(seed), cfg(seed), train data, test data, loss_fn)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 4, generator=g) * 2 - 1
    y = torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(torch.pi * x[:, 3])], 1)
    moons = torch.randn(400, 2, generator=g), torch.randint(2, (400,), generator=g)
    seq = sequences(9000, g)
    pixels = torch.rand(5000, 784, generator=g), torch.randint(10, (5000,), generator=g)

    def mlp(*args, **kw):
        return lambda seed: bc.BioMLP(*args, **kw, generator=torch.Generator().manual_seed(seed))

    def cfg(**kw):
        return lambda seed: bc.BIMTConfig(steps=steps, eval_every=steps, seed=seed, **kw)

    def split(data, n):
        return tuple(t[:n] for t in data), tuple(t[n:] for t in data)

    return {
        "fig3 [4,20,20,2] sum cost, 100": (mlp([4, 20, 20, 2]), cfg(), *split((x, y), 100), F.mse_loss),
        "fig4 [2,20,20,2] CE, 200": (mlp([2, 20, 20, 2]), cfg(l0=0.2, top_k=10, bias_penalty_from=None),
                                     *split(moons, 200), F.cross_entropy),
        "fig5 emb 59x32 [64,50,50,59], 2784": (mlp([64, 50, 50, 59], in_fold=2, vocab_size=59),
                                              cfg(lr=1e-3, lam=0.1, embedding_penalty=True, top_k=30, **MEAN),
                                              *split(tokens(59, 59 * 59, g), 2784), F.cross_entropy),
        "fig6 emb 24x32 [64,50,50,24], 460": (mlp([64, 50, 50, 24], in_fold=2, vocab_size=24),
                                             cfg(lam=1.0, lam_schedule=(), embedding_penalty=True, top_k=30,
                                                 bias_penalty_from=None, **{**MEAN, "weight_factor": 1.0}),
                                             *split(tokens(24, 576, g), 460), F.cross_entropy),
        "fig7 transformer d32 x2, batch 64": (
            lambda seed: bc.BioTransformer(2, 2, generator=torch.Generator().manual_seed(seed)),
            cfg(lr=1e-3, top_k=20, batch_size=64, bias_penalty_from=None, **MEAN), *split(seq, 8000),
            lambda out, y: F.mse_loss(out[:, [0, 2], 0], y)),
        "fig8 784-100-100-10 grid/ring, 100": (
            mlp([784, 100, 100, 10], geometry="grid", out_geometry="ring", fix_inputs=True),
            cfg(lr=1e-3, lam=0.01, last_layer_l0_only=True, top_k=30, swap_every=500, batch_size=100,
                bias_penalty_from=None, **MEAN), *split(pixels, 4000),
            lambda out, y: F.mse_loss(out, F.one_hot(y, 10).float())),
    }


def time_singles(make, cfg, train, test, loss_fn, seeds) -> float:
    t = time.process_time()
    for s in seeds:
        bc.train(make(s), cfg(s), train, test, loss_fn, progress=False)
    return time.process_time() - t


def time_ensemble(make, cfg, train, test, loss_fn, seeds) -> float:
    models, cfgs = [make(s) for s in seeds], [cfg(s) for s in seeds]
    t = time.process_time()
    be.train_ensemble(models, cfgs, [train] * len(seeds), [test] * len(seeds), loss_fn, progress=False)
    return time.process_time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=500, help="steps per run (swaps every 200, Fig 8 every 500)")
    ap.add_argument("--only", nargs="*", help="figure name prefixes, e.g. fig3 fig7")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = range(args.members)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.members} members x {args.steps} "
          f"steps, {args.rounds} alternating rounds; ms per step per member, medians")
    for name, (make, cfg, train, test, loss_fn) in figures(args.steps).items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        # imports, first-call setup: untimed, and without swaps (two steps never reach a swap pass)
        warm = [lambda seed: dataclasses.replace(cfg(seed), steps=2, swap=False)]
        time_singles(make, *warm, train, test, loss_fn, seeds[:1])
        time_ensemble(make, *warm, train, test, loss_fn, seeds)
        singles, ensemble = [], []
        for _ in range(args.rounds):
            singles.append(time_singles(make, cfg, train, test, loss_fn, seeds))
            ensemble.append(time_ensemble(make, cfg, train, test, loss_fn, seeds))
        per = args.members * args.steps / 1e3
        ratios = sorted(s / e for s, e in zip(singles, ensemble))
        print(f"{name:38s} singles {statistics.median(singles) / per:6.3f}   ensemble "
              f"{statistics.median(ensemble) / per:6.3f}   ratio {statistics.median(ratios):5.2f}x "
              f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})", flush=True)


if __name__ == "__main__":
    main()
