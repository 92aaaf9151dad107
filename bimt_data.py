"""The data BIMT trains on. MNIST for the paper's Fig 8: the shipped 5,000-digit subset (data/mnist_5k.npz, its
checksum verified) or a folder of the standard IDX files, as float32 pixels and int64 labels. And what `train`
does with the data it is given: checks (pairs of tensors, finite, in the model's dtype; targets that suit the
outputs and the loss) and a batch per step (full batch, sampled rows, or the batches of a DataLoader). It
imports nothing of the method; bimt_core imports it and re-exports its public names (bc.load_mnist)."""
from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import math
import zlib
from pathlib import Path

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MNIST_5K", "MNIST_5K_SHA256", "IDX_NAMES", "read_idx", "load_mnist"]

MNIST_5K = Path(__file__).resolve().parent / "data" / "mnist_5k.npz"  # provenance: data/README.md
MNIST_5K_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

def read_idx(path) -> np.ndarray:
    """One IDX file, raw or gzipped -> uint8 array (big-endian magic 0x801 / 0x803, then int32 dims)."""
    path = Path(path)
    buf = path.read_bytes()
    if buf[:2] == b"\x1f\x8b":  # gzip magic; an IDX file starts with two zero bytes
        try:
            buf = gzip.decompress(buf)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    magic = int.from_bytes(buf[:4], "big") if len(buf) >= 4 else None
    if magic not in (0x801, 0x803):
        raise ValueError(f"{path}: bad magic number {magic if magic is None else hex(magic)}; expected 0x801 "
                         f"(labels) or 0x803 (images) - not an unsigned-byte IDX file")
    ndim = magic & 0xFF
    if len(buf) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated header ({len(buf)} bytes)")
    dims = [int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    need = 4 + 4 * ndim + math.prod(dims)
    if len(buf) != need:
        raise ValueError(f"{path}: {'truncated' if len(buf) < need else 'trailing bytes'}: header says {dims} "
                         f"({need} bytes) but the file has {len(buf)} bytes")
    return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(dims)

def _find_idx(folder: Path, name: str) -> Path:
    for cand in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    raise FileNotFoundError(f"{folder}: no {name}[.gz]; an MNIST folder must hold {', '.join(IDX_NAMES)} "
                            f"(each raw or .gz)")

def _to_tensors(images: np.ndarray, labels: np.ndarray, source) -> tuple[torch.Tensor, torch.Tensor]:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8 of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.dtype != np.uint8 or (labels.size and labels.max() > 9):
        raise ValueError(f"{source}: expected {len(images)} uint8 labels in 0..9 (one per image), got "
                         f"{labels.dtype} {labels.shape}" + (f" with max {labels.max()}" if labels.size else ""))
    x = torch.from_numpy(images.reshape(len(images), 784).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))

def _is_count(v, lo: int, hi: float = math.inf) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= v < hi  # a bool is no count

def load_mnist(path=None, n_test: int = 1000, seed: int = 0):
    """MNIST -> x_train, y_train, x_test, y_test: float32 pixels in [0, 1], (N, 784) row-major, int64 labels
    (N,). path None: the shipped 5,000-digit subset (checksum verified) or an .npz with uint8 'images' (N, 28,
    28) and 'labels', split at random by seed; a folder: the IDX files (IDX_NAMES), the official split."""
    path = MNIST_5K if path is None else Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; expected an .npz of MNIST digits or a folder "
                                f"holding {', '.join(IDX_NAMES)} (each raw or .gz)")
    if path.is_dir():
        tr = [read_idx(_find_idx(path, n)) for n in IDX_NAMES[:2]]
        te = [read_idx(_find_idx(path, n)) for n in IDX_NAMES[2:]]
        return (*_to_tensors(*tr, f"{path} (train)"), *_to_tensors(*te, f"{path} (t10k)"))
    raw = path.read_bytes()
    if path.resolve() == MNIST_5K and hashlib.sha256(raw).hexdigest() != MNIST_5K_SHA256:
        raise ValueError(f"{path}: SHA-256 does not match the shipped subset (corrupt or truncated?); "
                         f"rebuild it as data/README.md describes")
    try:
        with np.load(io.BytesIO(raw)) as f:
            images, labels = f["images"], f["labels"]
    except Exception as e:
        raise ValueError(f"{path}: not an .npz holding 'images' and 'labels' ({type(e).__name__}: {e})") from None
    x, y = _to_tensors(images, labels, path)
    if not _is_count(n_test, 1, len(x)):
        raise ValueError(f"n_test must be an int in (0, {len(x)}), got {n_test!r}")
    if not _is_count(seed, 0):
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]

# -- The data train reads ----------------------------------------------------------------------------
def _finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not (ok := torch.isfinite(t)).all():
        i = tuple((~ok).nonzero()[0].tolist())
        raise ValueError(f"{name} hold {t[i].item()} at index {i} (the first of {int((~ok).sum())}); BIMT needs "
                         f"finite data: drop or impute those entries")

def _is_pair(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(map(torch.is_tensor, data))

def _pair(name: str, pair, dtype: torch.dtype, device=None) -> tuple:
    """An (inputs, targets) pair of tensors, checked (as many of each, > 0; floats in dtype), on device."""
    if not _is_pair(pair):
        raise ValueError(f"{name} must be an (inputs, targets) pair of tensors, or an iterable of such batches (a "
                         f"DataLoader), got {type(pair).__name__!r}")
    if len(pair[0]) != len(pair[1]) or len(pair[0]) == 0:
        raise ValueError(f"{name}: {len(pair[0])} inputs and {len(pair[1])} targets; expected the same number, > 0")
    for what, t in zip(("inputs", "targets"), pair):
        if t.is_floating_point() and t.dtype != dtype:
            raise ValueError(f"{name} {what} are {t.dtype} but the model trains in {str(dtype)[6:]}; convert them "
                             f"with .to({dtype})")
    return pair[0].to(device), pair[1].to(device)

def _tensors(name: str, data, dtype: torch.dtype, device, concat: bool = False) -> tuple | None:
    """(inputs, targets), checked and on device, of a pair of tensors or, with concat, of the batches of an
    iterable (None without concat)."""
    if not _is_pair(data) and not torch.is_tensor(data) and hasattr(data, "__iter__"):
        if not concat:
            return None
        data = [torch.cat(t) for t in zip(*(_pair(f"{name}'s batch", b, dtype) for b in data))] or data
    x, y = _pair(name, data, dtype, device)
    _finite(f"{name} inputs", x), _finite(f"{name} targets", y)
    return x, y

def _rows(x: torch.Tensor, y: torch.Tensor, idx, step: int) -> tuple:
    """x[idx], y[idx], or a clear error for indices that do not pick a batch of rows."""
    try:
        xb, yb = x[idx], y[idx]
    except (IndexError, TypeError, RuntimeError):
        xb = None
    if xb is None or xb.dim() != x.dim() or len(xb) == 0:
        raise ValueError(f"sampler({step}) returned {idx!r}; expected a non-empty 1-D tensor of row indices in "
                         f"[0, {len(x)})")
    return xb, yb

def _loss_probe(loss_fn, out: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """loss_fn(out, y) the first time: targets that would broadcast, or a failure, told with what a loss expects."""
    got = f"outputs {out.dtype} {tuple(out.shape)} and {name} targets {y.dtype} {tuple(y.shape)}" + (
        "" if y.is_floating_point() else f" in [{y.min()}, {y.max()}]")
    expect = (f"Expected: a regression loss (F.mse_loss) takes float targets shaped like the outputs; a classification "
              f"loss (F.cross_entropy) int64 labels in [0, {out.shape[-1]}) of shape {tuple(out.shape[:-1])}")
    if y.is_floating_point() and out.shape != y.shape and all(a == b or 1 in (a, b) for a, b in zip(
            out.shape[::-1], y.shape[::-1])):
        raise ValueError(f"{got} would broadcast into a wrong loss. {expect}")
    if (loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss)) and y.is_floating_point() and (
            y.dim() > 1 and not ((y >= 0).all() and torch.allclose(y.sum(1), y.new_ones(())))):
        raise ValueError(f"cross-entropy reads float targets as class probabilities (>= 0, summing to 1 over dim 1), "
                         f"which these are not: {got}. {expect}")
    try:
        loss = loss_fn(out, y)
    except Exception as e:
        raise ValueError(f"loss_fn failed on {got} ({type(e).__name__}: {e}). {expect}") from e
    if not (torch.is_tensor(loss) and loss.dim() == 0 and (loss.requires_grad or not torch.is_grad_enabled())):
        raise ValueError(f"loss_fn must return a scalar tensor with gradients (e.g. F.mse_loss(out, y)), got {loss!r}")
    return loss

def _cycle(data, dtype: torch.dtype, device, step: int):
    """The batches of an iterable, checked and on device, for steps step, step + 1, ..., pass after pass."""
    n = 1
    while n:  # until a pass yields nothing
        n = 0
        for n, batch in enumerate(data, 1):
            yield _pair(f"train_data's batch for step {step}", batch, dtype, device)
            step += 1
    raise ValueError(f"train_data yielded no batch for step {step}: a spent iterator has no second pass (pass a "
                     f"DataLoader or a list of batches)")

def _batches(data, dtype: torch.dtype, device, sampler, batch_size: int | None, seed: int, start: int):
    """An iterator of the (inputs, targets) of steps start, start + 1, ...: of a pair of tensors (checked now)
    the whole, its rows sampler(step), or batch_size rows drawn with replacement (seeded by seed and start: a
    continuation draws anew); or the batches of an iterable (a DataLoader), pass after pass."""
    tensors = _tensors("train_data", data, dtype, device)
    if tensors is None:
        if sampler is not None or batch_size is not None:
            raise ValueError(f"sampler and cfg.batch_size must be None when train_data yields its own batches, got "
                             f"{sampler!r} and {batch_size!r}")
        return _cycle(data, dtype, device, start)
    if sampler is None and batch_size is not None:
        gen = torch.Generator().manual_seed(hash((seed, start)) % 2 ** 63 if start else seed)
        sampler = lambda step: torch.randint(len(tensors[0]), (batch_size,), generator=gen)  # noqa: E731
    return (tensors if sampler is None else _rows(*tensors, sampler(step), step) for step in itertools.count(start))
