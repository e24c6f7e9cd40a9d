"""Fashion-MNIST, the MNIST stand-in (same IDX format, 28x28 grey images, 10 classes).

The four IDX files are looked up, in order, in ``data/fashion-mnist/``, in Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), and else downloaded from
the data set's official source. Their *decompressed* contents are checked against SHA-256 sums
(recompressed copies, such as Debian's, differ in their gzip bytes but not in their contents).

``python -m lopt.data prepare`` (a DVC stage) writes ``data/fashion_mnist.npz``: uint8 images and
labels in a fixed, seeded train/valid/test split (50k/10k/10k). Notebooks read it with
:func:`load_splits`. Two moons come from scikit-learn (:class:`lopt.tasks.TwoMoonsFamily`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import sys
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import config

FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
NUM_VALID = 10_000
SPLIT_SEED = 0

FIX = (
    "Fix: `make data` (installs Debian's package when apt is available and you are root), or\n"
    "  sudo apt-get install dataset-fashion-mnist && python -m lopt.data prepare\n"
    "or copy the four *-ubyte.gz files into data/fashion-mnist/ and run `python -m lopt.data prepare`."
)


class DataError(RuntimeError):
    """Missing or corrupt data; the message says the commands that fix it."""


def raw_dir() -> Path:
    return config.repo_root() / "data" / "fashion-mnist"


def prepared_path() -> Path:
    return config.repo_root() / "data" / "fashion_mnist.npz"


def _content_sha256(path: Path) -> str:
    with gzip.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def verify(path: Path, name: str | None = None) -> bool:
    """Whether ``path`` holds the expected contents of the Fashion-MNIST file ``name``
    (default: the file's own name)."""
    expected = FILES.get(name or path.name)
    if expected is None:
        return False
    try:
        return _content_sha256(path) == expected
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def download(dest: Path, url: str = URL, timeout: float = 30.0) -> None:
    """Download the four files from ``url`` into ``dest`` (verified)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = dest / name
        if target.is_file() and verify(target):
            continue
        tmp = dest / f"{name}.part"
        with urllib.request.urlopen(url + name, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        if not verify(tmp, name):
            tmp.unlink()
            raise DataError(f"downloaded {name} from {url} does not match its SHA-256.\n{FIX}")
        tmp.replace(target)


def find_raw(search: list[Path] | None = None, url: str | None = URL) -> Path:
    """A folder holding the four verified files: ``data/fashion-mnist``, Debian's, else download.

    Raises :class:`DataError` (naming the fix) when none is found and the download fails.
    """
    folders = search if search is not None else [raw_dir(), DEBIAN_DIR]
    corrupt: list[str] = []  # a corrupt copy does not hide a good one further down the list
    for folder in folders:
        if all((folder / n).is_file() for n in FILES):
            bad = [n for n in FILES if not verify(folder / n)]
            if not bad:
                if corrupt:
                    print(f"warning: skipped corrupt Fashion-MNIST files ({'; '.join(corrupt)}); using {folder}. "
                          "Delete the corrupt copies.", file=sys.stderr)
                return folder
            corrupt.append(f"{folder}: {', '.join(bad)}")
    if corrupt:
        raise DataError(f"corrupt Fashion-MNIST files (their contents do not match the SHA-256 sums): "
                        f"{'; '.join(corrupt)}. Delete them, then fix as below.\n{FIX}")
    if url:
        dest = folders[0] if folders else raw_dir()
        try:
            download(dest, url)
            return dest
        except OSError as e:
            raise DataError(
                f"Fashion-MNIST not found in {', '.join(map(str, folders))} and the download failed ({e}).\n{FIX}"
            ) from None
    raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, folders))}.\n{FIX}")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def prepare(out: Path | None = None, folder: Path | None = None) -> Path:
    """Write the compact, seeded train/valid/test split to ``data/fashion_mnist.npz``."""
    folder = folder or find_raw()
    x_train = read_idx(folder / "train-images-idx3-ubyte.gz")
    y_train = read_idx(folder / "train-labels-idx1-ubyte.gz")
    x_test = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    y_test = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x_train))
    valid, train = perm[:NUM_VALID], perm[NUM_VALID:]
    out = out or prepared_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": x_train[train], "y_train": y_train[train],
        "x_valid": x_train[valid], "y_valid": y_train[valid],
        "x_test": x_test, "y_test": y_test,
    }
    write_npz(out, arrays)
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so that the file's bytes (and its DVC
    hash) depend on the arrays only."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def load_splits(path: Path | None = None) -> dict[str, np.ndarray]:
    """The prepared splits: ``x_train, y_train, x_valid, y_valid, x_test, y_test`` (uint8)."""
    path = path or prepared_path()
    if not path.is_file():
        raise DataError(f"{path} not found: the data stage has not run.\n{FIX}")
    try:
        with np.load(path, allow_pickle=False) as f:
            splits = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path} is corrupt ({type(e).__name__}: {e}). Delete it and run "
                        "`python -m lopt.data prepare` (or `make data`) to write it again.") from None
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lopt.data", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["prepare", "check"])
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(find_raw(url=None))
        else:
            print(prepare())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
