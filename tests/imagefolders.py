"""Tiny image datasets on disk, for tests that go through the ImageFolder loader."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_folder(directory: Path, classes: int = 3, size: int = 8, per_class: int = 2) -> Path:
    """A tiny RGB ImageFolder: ``train/`` and ``test/`` with ``per_class`` random PNGs in each of ``classes``."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(classes):
            (directory / split / f"c{k}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(directory / split / f"c{k}" / f"{i}.png")
    return directory


def tar_gz(source: Path, archive: Path, prefix: str = "") -> Path:
    """``source``'s files as the ``.tar.gz`` ``archive``, named relative to ``source`` under ``prefix``."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=prefix + path.relative_to(source).as_posix(), recursive=False)
    return archive
