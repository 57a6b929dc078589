"""ImageFolder sources: a directory or ``.tar.gz``/``.tgz``/``.tar`` with ``train/<class>/*`` and
``test/<class>/*`` images (optionally under one top-level folder), decoded with Pillow into uint8 arrays.

Classes are the sorted class folders of ``train/``; images are read in sorted path order, must all have the size of
the first one, and are converted to its mode (one channel for grayscale, else RGB). The decoded arrays are cached
under ``<root>/imagefolder/<stem>-<sha256 prefix>.npz``, keyed by the source's sha256 and verified by a checksum
of their contents on every load. Problems raise :class:`~smoothcompress.study.data.DataError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from smoothcompress.extras import require
from smoothcompress.files import atomic_file, sha256_file
from smoothcompress.study.data.dataset import DataError, Dataset

__all__ = ["IMAGE_SUFFIXES", "archive_stem", "decode_imagefolder", "load_imagefolder"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
"""File suffixes (lower case) treated as images in an ImageFolder; other files are ignored."""

_CACHE_VERSION = 1

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def archive_stem(path: Path) -> str | None:
    """Name of an ImageFolder archive without its suffix, or None if ``path`` is not an archive."""
    lower = path.name.lower()
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _split_member(relpath: str) -> tuple[str, str] | None:
    """``(split, class)`` of an image path like ``[top/]train/<class>/.../x.jpg``, or None to ignore it."""
    parts = relpath.strip("/").split("/")
    if any(p.startswith(".") for p in parts) or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    for i in (0, 1):
        if len(parts) >= i + 3 and parts[i] in ("train", "test"):
            return parts[i], parts[i + 1]
    return None


def _read_archive(path: Path) -> list[tuple[str, bytes]]:
    files = []
    try:
        with tarfile.open(path, "r|*") as tar:  # streaming: one pass over the compressed archive
            for member in tar:
                if member.isfile() and _split_member(member.name):
                    files.append((member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); get a fresh copy") from None
    return files


def _read_directory(path: Path) -> tuple[list[tuple[str, bytes]], str]:
    files, h = [], hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if _split_member(rel):
            data = file.read_bytes()
            h.update(f"{rel}\0{len(data)}\0".encode())
            h.update(data)
            files.append((rel, data))
    return files, h.hexdigest()


def decode_imagefolder(files: list[tuple[str, bytes]], source: Path) -> dict[str, np.ndarray]:
    """Decode ``(relpath, bytes)`` pairs into uint8 arrays; classes are the sorted train class folders."""
    Image = require("PIL.Image", "data")  # noqa: N806 - the module, as `from PIL import Image` names it

    files = sorted(files)
    splits = {"train": [], "test": []}
    for rel, data in files:
        split, cls = _split_member(rel)
        splits[split].append((rel, cls, data))
    layout = "train/<class>/*.jpg and test/<class>/*.jpg"
    for split, items in splits.items():
        if not items:
            raise DataError(f"{source} has no images under {split}/<class>/; an ImageFolder needs {layout}")
    classes = sorted({cls for _, cls, _ in splits["train"]})
    extra = sorted({cls for _, cls, _ in splits["test"]} - set(classes))
    if extra:
        raise DataError(f"{source}: test classes {extra} have no training images")
    index = {c: i for i, c in enumerate(classes)}

    def open_image(rel, data):
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            return img
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a bad file
            raise DataError(f"cannot decode {source}::{rel} ({e}): the data is corrupt") from None

    first = open_image(*splits["train"][0][::2])
    mode = "L" if first.mode in _GRAY_MODES else "RGB"
    size = first.size
    out = {"classes": np.array(classes)}
    for split, items in splits.items():
        channels = 1 if mode == "L" else 3
        x = np.empty((len(items), size[1], size[0], channels), dtype=np.uint8)
        for i, (rel, _, data) in enumerate(items):
            img = open_image(rel, data)
            if img.size != size:
                raise DataError(
                    f"{source}::{rel} is {img.size[0]}x{img.size[1]} but the first image is {size[0]}x{size[1]}; "
                    f"resize the ImageFolder to one size first"
                )
            if img.mode != mode:
                img = img.convert(mode)
            x[i] = np.asarray(img).reshape(size[1], size[0], channels)
        out[f"x_{split}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out[f"y_{split}"] = np.array([index[cls] for _, cls, _ in items], dtype=np.int64)
    return out


def _arrays_digest(arrays: dict[str, np.ndarray], source_sha256: str) -> str:
    h = hashlib.sha256(source_sha256.encode())
    for key in ("x_train", "y_train", "x_test", "y_test", "classes"):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes() if a.dtype.kind == "U" else memoryview(a).cast("B"))
    return h.hexdigest()


def _save_cache(path: Path, arrays: dict[str, np.ndarray], source_sha256: str) -> None:
    meta = {"version": _CACHE_VERSION, "source_sha256": source_sha256, "digest": _arrays_digest(arrays, source_sha256)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    except OSError as e:
        warnings.warn(
            f"could not write the dataset cache {path} ({e}); the images will be decoded again next time", stacklevel=3
        )


def _load_cache(path: Path, source_sha256: str) -> dict[str, np.ndarray]:
    bad = f"the dataset cache {path} is corrupt or partial"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("meta", "x_train", "y_train", "x_test", "y_test", "classes")}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as e:  # noqa: BLE001 - zip, npy and json errors all mean a damaged file
        raise DataError(f"{bad} ({type(e).__name__}: {e}); delete it and run again to rebuild it") from None
    if meta.get("version") != _CACHE_VERSION or meta.get("source_sha256") != source_sha256:
        raise DataError(f"{bad} (it was written for another source or version); delete it and run again")
    if meta.get("digest") != _arrays_digest(arrays, source_sha256):
        raise DataError(f"{bad} (its checksum does not match its contents); delete it and run again to rebuild it")
    return arrays


def load_imagefolder(path: Path, root: Path) -> Dataset:
    if path.is_dir():
        stem = path.resolve().name
        files, sha = _read_directory(path)
    else:
        stem = archive_stem(path)
        files, sha = None, sha256_file(path)
    cache = root / "imagefolder" / f"{stem}-{sha[:16]}.npz"
    if cache.is_file():
        arrays = _load_cache(cache, sha)
    else:
        arrays = decode_imagefolder(files if files is not None else _read_archive(path), path)
        _save_cache(cache, arrays, sha)
    return Dataset.from_arrays(
        f"imagefolder:{stem}",
        torch.from_numpy(arrays["x_train"]),
        torch.from_numpy(arrays["y_train"]),
        torch.from_numpy(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"]),
        [str(c) for c in arrays["classes"]],
        sha,
        augment=True,
    )
