"""The official python-format CIFAR-10/100 archives: download, md5 verification, extraction, safe unpickling.

When an archive is absent from the data root it is downloaded from :data:`BASE_URL` (or
``$SMOOTHCOMPRESS_DATA_URL``), verified against its published md5 and extracted; every extracted file is checked
against its own md5 before it is read, and the batches are read by an unpickler that rebuilds numpy arrays only.
Problems raise :class:`~smoothcompress.study.data.DataError` with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smoothcompress.files import atomic_file, file_digest, sha256_file
from smoothcompress.study.data.dataset import ROOT_ENV, DataError, Dataset

__all__ = ["BASE_URL", "DOWNLOAD_TIMEOUT", "OFFICIAL", "URL_ENV", "OfficialArchive", "load_official", "official_at"]

URL_ENV = "SMOOTHCOMPRESS_DATA_URL"
"""Environment variable that overrides :data:`BASE_URL` (e.g. a local mirror)."""

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
"""Where the official CIFAR archives are downloaded from; ``$SMOOTHCOMPRESS_DATA_URL`` overrides it."""

DOWNLOAD_TIMEOUT = 10.0
"""Seconds a connection or a read may stall before a download gives up (offline machines fail fast)."""


@dataclass(frozen=True)
class OfficialArchive:
    """One official python-format archive and the md5 of every file in it (as published, and used by torchvision).

    Parameters
    ----------
    title : str
        Human name for messages, e.g. ``"CIFAR-10"``.
    filename : str
        Archive file name, appended to the base URL to download it.
    md5 : str
        md5 of the archive.
    folder : str
        Folder the archive extracts to.
    train, test : tuple of (str, str)
        ``(file, md5)`` of each pickled batch, in order.
    meta : (str, str)
        ``(file, md5)`` of the pickle holding the class names.
    label_key, names_key : str
        Keys of the labels in a batch and of the class names in ``meta``.
    """

    title: str
    filename: str
    md5: str
    folder: str
    train: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    label_key: str
    names_key: str

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """Every ``(file, md5)`` the loader reads."""
        return (*self.train, *self.test, self.meta)


OFFICIAL: dict[str, OfficialArchive] = {
    "cifar10": OfficialArchive(
        title="CIFAR-10",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": OfficialArchive(
        title="CIFAR-100",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta=("meta", "7973b15100ade9c7d40fb424638fde48"),
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}
"""The official archives by dataset name. Tests may swap an entry for one describing a small archive of theirs."""


def _base_url() -> str:
    url = os.environ.get(URL_ENV) or BASE_URL
    return url if url.endswith("/") else url + "/"


def _missing_message(spec: OfficialArchive, root: Path, reason: str) -> str:
    return (
        f"{spec.title} is not in {root} and could not be downloaded ({reason}). "
        f"To fix it, copy {spec.filename} (md5 {spec.md5}, from {_base_url()}{spec.filename}) or its extracted "
        f"folder {spec.folder}/ into {root}, or pass --data DIR naming the folder that holds them "
        f"(or set {ROOT_ENV}=DIR). To use an ImageFolder copy instead, pass its path as the dataset, "
        f"e.g. --dataset ../shared/data/cifar10-jpeg.tar.gz."
    )


def load_official(name: str, root: Path, download: bool) -> Dataset:
    spec = OFFICIAL[name]
    folder, archive = root / spec.folder, root / spec.filename
    if not all((folder / f).is_file() for f, _ in spec.files):
        if not archive.is_file():
            if not download:
                raise DataError(_missing_message(spec, root, "download=False"))
            _download(spec, root)
        elif file_digest(archive, "md5") != spec.md5:
            raise DataError(
                f"{archive} does not match the official md5 {spec.md5}: it is corrupt or partial. "
                f"Delete it and run again to download a fresh copy."
            )
        _extract(spec, archive, folder)
    for f, md5 in spec.files:
        if file_digest(folder / f, "md5") != md5:
            raise DataError(
                f"{folder / f} does not match its official md5 {md5}: the extracted files are corrupt or not the "
                f"official ones. Delete {folder} and run again to extract it from {spec.filename}."
            )

    # Every file read below has just matched its official md5, so unpickling it cannot run foreign code.
    # The restricted unpickler is a second guard: it only rebuilds numpy arrays.
    def batches(files):
        xs, ys = [], []
        for f, _ in files:
            d = _unpickle(folder / f)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[spec.label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = batches(spec.train)
    x_test, y_test = batches(spec.test)
    names = _unpickle(folder / spec.meta[0])[spec.names_key]
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if archive.is_file():
        sha = sha256_file(archive)
    else:  # only the extracted folder is here: hash its files, in order
        h = hashlib.sha256()
        for f, _ in spec.files:
            h.update((folder / f).read_bytes())
        sha = h.hexdigest()
    return Dataset.from_arrays(name, x_train, y_train, x_test, y_test, classes, sha, augment=True)


def official_at(path: Path) -> tuple[str, Path] | None:
    """``(name, root)`` when ``path`` is an official archive, its extracted folder, or a folder holding either."""
    for name, spec in OFFICIAL.items():
        if path.name in (spec.filename, spec.folder) and path.exists():
            return name, path.parent
    found = [n for n, s in OFFICIAL.items() if (path / s.folder).is_dir() or (path / s.filename).is_file()]
    if len(found) > 1:
        raise DataError(f"{path} holds {' and '.join(found)}; name the dataset and pass the folder as the data root")
    return (found[0], path) if found else None


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _NumpyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a CIFAR batch
        raise DataError(f"cannot read {path}: {e}") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _download(spec: OfficialArchive, root: Path) -> None:
    url = _base_url() + spec.filename
    try:
        response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(_missing_message(spec, root, f"{url}: {reason}")) from None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        response.close()
        raise DataError(f"cannot create the data folder {root}: {e}; pass --data DIR with a writable folder") from None
    from tqdm.auto import tqdm

    total = int(response.headers.get("Content-Length") or 0) or None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {spec.filename}", disable=None)
    md5 = hashlib.md5()
    try:
        # The partial download lives in a temporary file that is deleted unless its md5 is right.
        with response, bar, atomic_file(root / spec.filename) as out:
            while block := response.read(1 << 20):
                out.write(block)
                md5.update(block)
                bar.update(len(block))
            if md5.hexdigest() != spec.md5:
                raise DataError(
                    f"the download of {url} has md5 {md5.hexdigest()}, expected {spec.md5}: it is corrupt or was "
                    f"cut short, and has been deleted. Run again to retry."
                )
    except (OSError, urllib.error.URLError) as e:
        raise DataError(_missing_message(spec, root, f"the download of {url} failed: {e}")) from None


def _extract(spec: OfficialArchive, archive: Path, folder: Path) -> None:
    """Extract exactly the files the loader reads, each written atomically (safe if several ranks race)."""
    wanted = {f"{spec.folder}/{f}": f for f, _ in spec.files}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    with atomic_file(folder / wanted.pop(member.name)) as out:
                        out.write(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"cannot extract {archive}: {e}. Delete it and run again to download a fresh copy.") from None
    if wanted:
        raise DataError(f"{archive} lacks {', '.join(sorted(wanted))}: it is not the official {spec.title} archive")
