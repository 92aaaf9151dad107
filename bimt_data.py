"""MNIST for the paper's Fig 8, read from files: the shipped 5,000-digit subset (data/mnist_5k.npz, its checksum
verified) or a folder of the standard IDX files, as float32 pixels and int64 labels. Imported on its own, as
`import bimt_data as bd` (bd.load_mnist); bimt_core, the method, does not import it."""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import zlib
from pathlib import Path

import numpy as np

import torch

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
