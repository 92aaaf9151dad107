"""Time the drawing of the MNIST-shaped network (784-100-100-10, 89,400 connections), render included.

Not collected by pytest. Run: python benchmarks/bench_plot.py [out.png]
"""
import pathlib
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import bimt_core as bc  # noqa: E402
import bimt_seeing as bs

torch.set_num_threads(1)
print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
model = bc.BioMLP([784, 100, 100, 10], geometry="grid", out_geometry="ring", fix_inputs=True,
                  generator=torch.Generator().manual_seed(0))
line = bc.BioMLP([784, 100, 100, 10], generator=torch.Generator().manual_seed(0))
digit = torch.rand(28, 28, generator=torch.Generator().manual_seed(1))
for name, draw in [("plot_network_3d (grid)", lambda: bs.plot_network_3d(model, image=digit,
                                                                           out_labels=list(range(10)))),
                   ("plot_network (line)", lambda: bs.plot_network(line))]:
    t, c = time.perf_counter(), time.process_time()
    ax = draw()
    ax.figure.canvas.draw()  # the lines are only rasterised here
    # CPU time as well: on a shared machine the wall time also counts the other processes' turns
    print(f"{name}: {time.perf_counter() - t:.2f} s wall, {time.process_time() - c:.2f} s CPU "
          "for 89,400 connections")
    if len(sys.argv) > 1 and "3d" in name:
        ax.figure.savefig(sys.argv[1], dpi=100)
    plt.close("all")
