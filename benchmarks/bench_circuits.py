"""Circuit discovery on BIMT networks and what BIMT costs (Nainani 2024, arXiv:2401.03646). Not collected by pytest.

    python benchmarks/bench_circuits.py [--modadd] [--threads N]

Trains two moons (notebooks/two_moons.ipynb, about 10 s per model) with BIMT and, for comparison, without it
(lambda 0, no swaps; same steps, lr and seed). For each model: EAP and ACDC (mean ablation, metric = mean
correct-class log-prob on the test set) at faithfulness 0.9 and 0.99, their time and circuit size; then
`compact` at the relative threshold of the Fig 4 claims and its inference latency against the original
(median of interleaved timings in one process). --modadd adds modular addition p = 59 (section 3; about
2 minutes of training, BIMT only), with ACDC restricted to connections above 1% of their layer's max.
"""
import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import bimt_core as bc  # noqa: E402
import bimt_seeing as bs

THRESHOLD = 0.05  # the Fig 4 notebook's claims threshold (relative to each layer's strongest weight)


def two_moons(n: int, noise: float, rng: np.random.Generator):
    """As in notebooks/two_moons.ipynb: (x (n, 2), y (n,)), shuffled."""
    t0, t1 = np.linspace(0, np.pi, n // 2), np.linspace(0, np.pi, n - n // 2)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    y = np.concatenate([np.zeros(n // 2), np.ones(n - n // 2)]).astype(np.int64)
    order = rng.permutation(n)
    return torch.tensor((x + noise * rng.standard_normal(x.shape))[order], dtype=torch.float32), torch.tensor(y[order])


def moons(bimt: bool):
    cfg = bc.BIMTConfig(steps=10001, lr=2e-3, lam=1e-3 if bimt else 0.0, lam_schedule=((5000 / 10001, 10.0),),
                        l0=0.2, weight_factor=1.0, agg="sum", bias_penalty_from=None, top_k=10, swap_every=200,
                        swap=bimt, seed=0)
    rng = np.random.default_rng(0)
    train, test = two_moons(200, 0.1, rng), two_moons(200, 0.1, rng)
    model = bc.BioMLP([2, 20, 20, 2], generator=torch.Generator().manual_seed(0))
    return model, cfg, train, test


def modadd(seed: int = 4):
    """The Fig 5 notebook's run (its seed 4 by default): model, config, train and test split."""
    cfg = bc.BIMTConfig(steps=20000, lr=1e-3, lam=0.1, lam_schedule=((0.25, 10.0), (0.75, 0.1)), weight_factor=2.0,
                        l0=0.5, agg="mean", bias_penalty_from=0.75, embedding_penalty=True, top_k=30,
                        swap_every=200, eval_every=1000, seed=seed)
    a, b = torch.meshgrid(torch.arange(59), torch.arange(59), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)
    y = (x[:, 0] + x[:, 1]) % 59
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(x))
    model = bc.BioMLP([64, 50, 50, 59], in_fold=2, vocab_size=59, generator=torch.Generator().manual_seed(seed))
    return model, cfg, (x[order[:n]], y[order[:n]]), (x[order[n:]], y[order[n:]])


def latency(fns, x, repeats: int):
    """Median seconds per call of each fn(x), timed side by side (interleaved) so drifts hit both alike."""
    times = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(repeats + 5):
            for t, fn in zip(times, fns):
                s = time.perf_counter()
                fn(x)
                t.append(time.perf_counter() - s)
    return [statistics.median(t[5:]) for t in times]


def report(name, model, test, big_x, acdc_threshold: float):
    x, y = test
    with torch.no_grad():
        acc = bc.accuracy(model(x), y)

    def metric(out):
        return out.log_softmax(-1)[torch.arange(len(y)), y].mean()

    graph = bs.network_graph(model)
    cand = bs.surviving(graph, acdc_threshold)
    r = bs.analyze(model, THRESHOLD)
    print(f"\n{name}: test accuracy {acc:.3f}; at threshold {THRESHOLD}: {r.connections}/{r.total_connections} "
          f"connections, {r.neurons}/{r.total_neurons} neurons")
    for target in (0.9, 0.99):
        for method in ("eap", "acdc"):
            kw = dict(candidates=cand) if method == "acdc" and acdc_threshold > 0 else {}
            c = bs.discover_circuit(model, x, metric, target=target, method=method, **kw)
            print(f"  target {target}: {method:4s} {len(c.edges):5d}/{c.total} connections, faithfulness "
                  f"{c.faithfulness:.3f}, {c.seconds * 1e3:8.1f} ms"
                  + (f" (ACDC over {sum(int(m.sum()) for m in cand)} connections >= {acdc_threshold} of max)"
                     if kw else ""))
    small = bs.compact(model, THRESHOLD)
    with torch.no_grad(), bs.prune(model, THRESHOLD):
        same = torch.allclose(small(big_x), model(big_x), atol=1e-5)
        acc_small = bc.accuracy(small(x), y)
    print(f"  compact at {THRESHOLD}: {model.shape} -> {small.shape}, test accuracy {acc_small:.3f}, "
          f"equal to the pruned original: {same}")
    for xb in (x, big_x):
        t_full, t_small = latency([model, small], xb, repeats=200)
        print(f"  latency, batch {len(xb)}: original {t_full * 1e6:.1f} us, compact {t_small * 1e6:.1f} us, "
              f"speedup {t_full / t_small:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    ap.add_argument("--modadd", action="store_true", help="also modular addition p = 59 (about 2 minutes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    big = torch.rand(10000, 2, generator=torch.Generator().manual_seed(1)) * 4 - 1.5
    for bimt in (True, False):
        model, cfg, train, test = moons(bimt)
        t = time.perf_counter()
        bc.train(model, cfg, train, test, F.cross_entropy, progress=False)
        print(f"\ntrained two moons {'with BIMT' if bimt else 'without BIMT (lambda 0, no swaps)'} "
              f"in {time.perf_counter() - t:.0f} s")
        report(f"two moons, {'BIMT' if bimt else 'plain'}", model, test, big, 0.0)
    if args.modadd:
        model, cfg, train, test = modadd()
        t = time.perf_counter()
        bc.train(model, cfg, train, test, F.cross_entropy, progress=False)
        print(f"\ntrained modular addition with BIMT in {time.perf_counter() - t:.0f} s")
        report("modular addition, BIMT", model, test, torch.cat([train[0], test[0]]), 0.01)


if __name__ == "__main__":
    main()
