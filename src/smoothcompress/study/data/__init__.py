"""Datasets as whole uint8 tensors, and a loader that batches, shards and augments them on the device.

- :mod:`~smoothcompress.study.data.dataset`: :class:`Dataset`, :func:`split_validation`, :func:`channel_stats`,
  :func:`default_root`.
- :mod:`~smoothcompress.study.data.sources`: :func:`load_dataset` (official archives, the bundled 8x8 digits,
  ImageFolders).
- :mod:`~smoothcompress.study.data.official`: the official CIFAR-10/100 archives (download, md5, extraction).
- :mod:`~smoothcompress.study.data.imagefolder`: ImageFolder directories and ``.tar.gz`` archives (decode, uint8 cache).
- :mod:`~smoothcompress.study.data.loader`: :class:`Loader` and :func:`augment_batch`.

Every problem with the data itself (missing, offline, corrupt) raises :class:`DataError`, whose message says what
to do. Settings read at call time (``DOWNLOAD_TIMEOUT``, ``OFFICIAL``) live in
:mod:`smoothcompress.study.data.official`.
"""

from smoothcompress.study.data.dataset import (
    ROOT_ENV,
    DataError,
    Dataset,
    channel_stats,
    default_root,
    split_validation,
)
from smoothcompress.study.data.imagefolder import IMAGE_SUFFIXES
from smoothcompress.study.data.loader import Loader, augment_batch, mix_seed
from smoothcompress.study.data.official import BASE_URL, OFFICIAL, URL_ENV, OfficialArchive
from smoothcompress.study.data.sources import load_dataset

__all__ = [
    "DataError",
    "Dataset",
    "OfficialArchive",
    "OFFICIAL",
    "BASE_URL",
    "ROOT_ENV",
    "URL_ENV",
    "IMAGE_SUFFIXES",
    "load_dataset",
    "split_validation",
    "channel_stats",
    "augment_batch",
    "mix_seed",
    "Loader",
    "default_root",
]
