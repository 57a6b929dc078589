"""Where a :class:`~smoothcompress.study.data.dataset.Dataset` comes from: :func:`load_dataset` gives one from
any of three kinds of source:

- ``"cifar10"`` / ``"cifar100"``: the official python-format archives (:mod:`smoothcompress.study.data.official`).
- ``"digits"``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified) by a fixed seed. No download.
- a path to an ImageFolder directory or ``.tar.gz`` of one (:mod:`smoothcompress.study.data.imagefolder`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from smoothcompress.extras import require
from smoothcompress.study.data import imagefolder, official
from smoothcompress.study.data.dataset import DataError, Dataset, default_root

__all__ = ["load_dataset"]


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load a dataset by name or path.

    Parameters
    ----------
    name : str
        ``"cifar10"``, ``"cifar100"``, ``"digits"``, or a path: an ImageFolder directory or ``.tar.gz`` archive
        with ``train/<class>/`` and ``test/<class>/`` folders, or the official CIFAR archive, its extracted folder,
        or a folder holding either (then ``root`` is that folder).
    root : str or path, optional
        Data root: where the official archives live or are downloaded to, and where ImageFolder caches are
        written. Default :func:`default_root`.
    download : bool
        Download an official archive that is not under ``root``. With False a missing archive raises.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Unknown name, missing or corrupt data, or a download that failed (offline).
    """
    key = str(name).strip().lower()
    root = Path(root).expanduser() if root is not None else default_root()
    if key in official.OFFICIAL:
        spec = official.OFFICIAL[key]
        if root.is_file() and root.name != spec.filename:
            raise DataError(
                f"the data root {root} is a file, not the folder that holds {spec.filename}. To train on an "
                f"ImageFolder archive, pass it as the dataset instead (--dataset {root})."
            )
        return official.load_official(key, root.parent if root.is_file() else root, download)
    if key == "digits":
        return _load_digits()
    path = Path(str(name)).expanduser()
    found = official.official_at(path)
    if found is not None:
        return official.load_official(found[0], found[1], download)
    if path.is_dir() or (path.is_file() and imagefolder.archive_stem(path) is not None):
        return imagefolder.load_imagefolder(path, root)
    if path.exists():
        raise DataError(f"{path} is neither a directory nor a .tar.gz/.tgz/.tar archive of an ImageFolder")
    known = ", ".join([*official.OFFICIAL, "digits"])
    raise DataError(
        f"unknown dataset {name!r}: use one of {known}, or the path of an ImageFolder directory or .tar.gz "
        f"(train/<class>/*.jpg and test/<class>/*.jpg); no such file or directory"
    )


def _load_digits() -> Dataset:
    from importlib import resources

    load_digits = require("sklearn.datasets", "data").load_digits
    train_test_split = require("sklearn.model_selection", "data").train_test_split

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    source = resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
    return Dataset.from_arrays(
        "digits",
        np.ascontiguousarray(x_train),
        y_train,
        np.ascontiguousarray(x_test),
        y_test,
        [str(c) for c in bunch.target_names],
        hashlib.sha256(source.read_bytes()).hexdigest(),
        augment=False,
    )
