"""The MNIST loader: the shipped 5,000-digit subset and the IDX reader (on small files written here)."""
import gzip

import numpy as np
import pytest
import torch

import bimt_data as bd


def test_subset_shapes_dtypes_and_split():
    x_tr, y_tr, x_te, y_te = bd.load_mnist()
    assert x_tr.shape == (4000, 784) and x_te.shape == (1000, 784)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert 0.0 == x_tr.min() and x_tr.max() == 1.0
    labels = torch.cat([y_tr, y_te])
    assert torch.bincount(labels).tolist() == [500] * 10  # the subset is balanced
    again = bd.load_mnist()
    assert torch.equal(again[3], y_te) and torch.equal(again[2], x_te)  # seeded: the same split every time
    other = bd.load_mnist(seed=1)
    assert not torch.equal(other[3], y_te)


def test_subset_checksum_guards_against_corruption(tmp_path, monkeypatch):
    bad = tmp_path / "mnist_5k.npz"
    bad.write_bytes(bd.MNIST_5K.read_bytes()[:-100])  # truncated copy
    monkeypatch.setattr(bd, "MNIST_5K", bad)  # where load_mnist reads it
    with pytest.raises(ValueError, match="mnist_5k.npz.*SHA-256"):
        bd.load_mnist()


def test_npz_with_wrong_contents(tmp_path):
    p = tmp_path / "digits.npz"
    np.savez(p, images=np.zeros((10, 28, 28), np.uint8), labels=np.full(10, 12, np.uint8))
    with pytest.raises(ValueError, match="digits.npz.*labels in 0..9"):
        bd.load_mnist(p, n_test=2)
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="digits.npz.*not an .npz"):
        bd.load_mnist(p)


def _idx(magic: int, dims, data: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + data


def _write_mnist(folder, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
        files = {f"{split}-images-idx3-ubyte": _idx(0x803, (n, 28, 28), arrays[split][0].tobytes()),
                 f"{split}-labels-idx1-ubyte": _idx(0x801, (n,), arrays[split][1].tobytes())}
        for name, blob in files.items():
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_roundtrip(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    x_tr, y_tr, x_te, y_te = bd.load_mnist(tmp_path)
    assert x_tr.shape == (6, 784) and x_te.shape == (4, 784) and y_tr.dtype == torch.int64
    assert torch.equal(x_tr, torch.from_numpy(arrays["train"][0].reshape(6, 784) / np.float32(255)))
    assert y_te.tolist() == arrays["t10k"][1].tolist()  # official split, order kept


def test_idx_bad_magic(tmp_path):
    _write_mnist(tmp_path)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(b"\x00\x00\x08\x02" + p.read_bytes()[4:])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: bad magic number 0x802"):
        bd.load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    p = tmp_path / name
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(ValueError, match=f"{name}: (truncated|corrupt or truncated gzip)"):
        bd.load_mnist(tmp_path)


def test_idx_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(0x801, (5,), bytes(5)))  # 6 images, 5 labels
    with pytest.raises(ValueError, match=r"\(train\): expected 6 uint8 labels"):
        bd.load_mnist(tmp_path)


def test_idx_missing_file(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte.*must hold train-images-idx3-ubyte"):
        bd.load_mnist(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder.*train-images-idx3-ubyte"):
        bd.load_mnist(tmp_path / "nowhere")


def test_read_idx_shape(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(_idx(0x803, (2, 3, 4), bytes(range(24))))
    assert bd.read_idx(p).shape == (2, 3, 4) and bd.read_idx(p)[1, 2, 3] == 23
    p.write_bytes(p.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="trailing bytes"):
        bd.read_idx(p)
