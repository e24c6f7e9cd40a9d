"""lopt.data: IDX reading, verification, lookup/download, deterministic npz, the prepared splits."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from lopt import data

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "data" / "fashion_mnist.npz"



def _write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file: two zero bytes, type 0x08 (uint8), ndim, big-endian dims, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _content_sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)])
def test_read_idx(tmp_path, shape):
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) * 7
    path = tmp_path / "x-idx.gz"
    _write_idx(path, arr)
    got = data.read_idx(path)
    assert got.shape == shape
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, arr)


def test_read_idx_hand_written_bytes(tmp_path):
    raw = b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes([1, 2, 3, 4, 5, 255])
    path = tmp_path / "h.gz"
    path.write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(data.read_idx(path), [[1, 2, 3], [4, 5, 255]])


def test_verify_rejects_wrong_files(tmp_path):
    name = "train-labels-idx1-ubyte.gz"
    wrong = tmp_path / name
    wrong.write_bytes(gzip.compress(b"not fashion mnist"))
    assert data.verify(wrong) is False
    not_gzip = tmp_path / "t10k-labels-idx1-ubyte.gz"
    not_gzip.write_bytes(b"plain bytes, no gzip header")
    assert data.verify(not_gzip) is False
    assert data.verify(tmp_path / "t10k-images-idx3-ubyte.gz") is False  # missing


def test_verify_accepts_matching_content(tmp_path, monkeypatch):
    content = b"some idx bytes"
    monkeypatch.setattr(data, "FILES", {"a.gz": _content_sha(content)})
    path = tmp_path / "a.gz"
    # recompressed copies differ in their gzip bytes but not in their contents
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    assert data.verify(path)
    path.write_bytes(gzip.compress(content, compresslevel=9, mtime=12345))
    assert data.verify(path)


def test_find_raw_missing_names_the_fix(tmp_path):
    with pytest.raises(data.DataError) as exc:
        data.find_raw(search=[tmp_path], url=None)
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)
    assert str(tmp_path) in str(exc.value)


def test_find_raw_corrupt_files(tmp_path):
    for name in data.FILES:
        (tmp_path / name).write_bytes(gzip.compress(b"garbage"))
    with pytest.raises(data.DataError, match="corrupt"):
        data.find_raw(search=[tmp_path], url=None)


def _raw_folders(tmp_path, monkeypatch, other: str, other_bytes: bytes | None):
    """A verified folder ``good`` with a.gz, b.gz (registered in ``data.FILES``) and a folder ``other`` holding
    ``other_bytes`` (gzipped) under the same names, or nothing."""
    folders = tmp_path / other, tmp_path / "good"
    for f in folders:
        f.mkdir()
    files = {}
    for i, name in enumerate(["a.gz", "b.gz"]):
        content = bytes([i]) * 10
        (folders[1] / name).write_bytes(gzip.compress(content))
        if other_bytes is not None:
            (folders[0] / name).write_bytes(gzip.compress(other_bytes))
        files[name] = _content_sha(content)
    monkeypatch.setattr(data, "FILES", files)
    return folders


def test_find_raw_finds_verified_folder(tmp_path, monkeypatch):
    empty, good = _raw_folders(tmp_path, monkeypatch, "empty", None)
    assert data.find_raw(search=[empty, good], url=None) == good


def test_corrupt_copy_does_not_hide_a_good_one(tmp_path, monkeypatch, capsys):
    """Issue: a corrupt local copy hid the good Debian copy, and `make data` repeated the error."""
    bad, good = _raw_folders(tmp_path, monkeypatch, "bad", b"flipped")
    assert data.find_raw(search=[bad, good], url=None) == good
    assert str(bad) in capsys.readouterr().err  # named, with the advice to delete it
    with pytest.raises(data.DataError, match="Delete them"):
        data.find_raw(search=[bad], url=None)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_prepared_file_names_the_file_and_the_fix(tmp_path, damage):
    path = tmp_path / "fashion_mnist.npz"
    rng = np.random.default_rng(0)
    data.write_npz(path, {k: rng.integers(0, 255, (64, 8), dtype=np.uint8)
                          for k in ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")})
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError) as exc:
        data.load_splits(path)
    assert str(path) in str(exc.value) and "lopt.data prepare" in str(exc.value)


def _fake_server(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A folder of fake gzipped files served through a file:// URL, and their content hashes."""
    served = tmp_path / "served"
    served.mkdir()
    files = {}
    for i, name in enumerate(["fake-images-idx3-ubyte.gz", "fake-labels-idx1-ubyte.gz"]):
        content = b"fake content %d" % i
        (served / name).write_bytes(gzip.compress(content))
        files[name] = _content_sha(content)
    return served.as_uri() + "/", files


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    url, files = _fake_server(tmp_path)
    monkeypatch.setattr(data, "FILES", {name: "0" * 64 for name in files})
    dest = tmp_path / "dest"
    with pytest.raises(data.DataError, match="SHA-256"):
        data.download(dest, url=url)
    assert not list(dest.glob("*.gz"))  # nothing unverified is left behind


def test_download_success(tmp_path, monkeypatch):
    url, files = _fake_server(tmp_path)
    monkeypatch.setattr(data, "FILES", files)
    dest = tmp_path / "dest"
    data.download(dest, url=url)
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    assert all(data.verify(dest / name) for name in files)


def test_find_raw_reports_failed_download(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FILES", {"nope.gz": "0" * 64})
    missing = (tmp_path / "no-such-server").as_uri() + "/"
    with pytest.raises(data.DataError, match="download failed"):
        data.find_raw(search=[tmp_path / "dest"], url=missing)


def test_write_npz_is_byte_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
        "y": rng.integers(0, 10, (20,), dtype=np.uint8),
        "f": rng.normal(size=(3, 5)),
    }
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    data.write_npz(a, arrays)
    data.write_npz(b, {k: v.copy() for k, v in arrays.items()})
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    with np.load(a) as f:
        assert sorted(f.files) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(f[k], v)
            assert f[k].dtype == v.dtype
    loaded = data.load_splits(a)
    np.testing.assert_array_equal(loaded["x"], arrays["x"])


def test_load_splits_missing(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.load_splits(tmp_path / "nothing.npz")


def test_prepare_from_fake_idx_files(tmp_path, monkeypatch):
    """prepare() splits the training file by its seeded permutation into disjoint train/valid."""
    rng = np.random.default_rng(1)
    n_train, n_test = 30, 7
    x_train = rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8)
    x_train[:, 0, 0] = np.arange(n_train)  # unique rows
    y_train = rng.integers(0, 10, n_train, dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test, dtype=np.uint8)
    for name, arr in [
        ("train-images-idx3-ubyte.gz", x_train),
        ("train-labels-idx1-ubyte.gz", y_train),
        ("t10k-images-idx3-ubyte.gz", x_test),
        ("t10k-labels-idx1-ubyte.gz", y_test),
    ]:
        _write_idx(tmp_path / name, arr)
    monkeypatch.setattr(data, "NUM_VALID", 10)
    out = data.prepare(out=tmp_path / "out.npz", folder=tmp_path)
    s = data.load_splits(out)
    assert s["x_train"].shape == (20, 4, 4) and s["x_valid"].shape == (10, 4, 4)
    np.testing.assert_array_equal(s["x_test"], x_test)
    np.testing.assert_array_equal(s["y_test"], y_test)
    ids_train, ids_valid = s["x_train"][:, 0, 0], s["x_valid"][:, 0, 0]
    assert set(ids_train).isdisjoint(ids_valid)
    assert sorted([*ids_train, *ids_valid]) == list(range(n_train))
    np.testing.assert_array_equal(s["y_train"], y_train[ids_train])
    # seeded: a second run writes the same bytes
    again = data.prepare(out=tmp_path / "again.npz", folder=tmp_path)
    assert again.read_bytes() == out.read_bytes()


# ---------------------------------------------------------------------------------------------
# The real data set (skipped where it is not installed)

HAVE_DEBIAN = data.DEBIAN_DIR.is_dir()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, np.ndarray]:
    if PREPARED.is_file():
        return data.load_splits(PREPARED)
    if HAVE_DEBIAN:
        return data.load_splits(data.prepare(tmp_path_factory.mktemp("fm") / "fm.npz", data.DEBIAN_DIR))
    pytest.skip("Fashion-MNIST is not available (no data/fashion_mnist.npz, no Debian package)")


def _row_hashes(x: np.ndarray) -> set[bytes]:
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x}


def test_prepared_splits(prepared):
    shapes = {"train": 50_000, "valid": 10_000, "test": 10_000}
    for split, n in shapes.items():
        x, y = prepared[f"x_{split}"], prepared[f"y_{split}"]
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.uint8
        assert set(np.unique(y)) == set(range(10))
    train = _row_hashes(prepared["x_train"])
    valid = _row_hashes(prepared["x_valid"])
    assert len(valid) > 9_900  # hashes are per row, not per array
    assert train.isdisjoint(valid)
    # the classes are balanced to within a few percent in every split
    for split, n in shapes.items():
        counts = np.bincount(prepared[f"y_{split}"], minlength=10)
        assert counts.min() > 0.9 * n / 10 and counts.max() < 1.1 * n / 10


@pytest.mark.skipif(not HAVE_DEBIAN, reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_files_verify():
    for name in data.FILES:
        assert data.verify(data.DEBIAN_DIR / name), name
