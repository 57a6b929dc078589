"""Saving, loading and ONNX export of dense, compressed and pruned models, without pickle.

A checkpoint is one safetensors file. The tensors are the model's ``state_dict``; the safetensors metadata (a
string-to-string map) holds everything needed to rebuild the module tree, as JSON:

* ``format`` = ``"smoothcompress"`` and ``format_version`` (currently 1);
* ``arch``: ``model.sc_arch`` of a registry-built model, ``{"name": ..., "kwargs": {...}}`` (or ``null``);
* ``modules``: ``{path: {"type": ..., "config": {...}}}`` for every module of a known type (Conv1d/2d/3d,
  Linear, BatchNorm1d/2d/3d, LayerNorm, GroupNorm, Embedding, FactorizedConv2d, FactorizedLinear, CPConv2d,
  TuckerConv2d), with its
  constructor arguments read off its current tensors, so channel counts changed by filter pruning are captured;
* ``compression``: the model's :class:`~smoothcompress.record.CompressionRecord` (``sc_compression``, set by
  :func:`smoothcompress.compress` and :func:`smoothcompress.prune`) as a JSON object, or ``null``;
* ``weights_sha256``: a checksum of all stored tensors, so a corrupted file is detected instead of silently loaded;
* ``sparse`` (format 2, written by ``save(..., sparse=True)``): ``{name: {"shape": [...], "encoding": e, "nnz": k}}``
  for every tensor stored sparse (see below).

Sparse storage (``save(model, path, sparse=True)``), for unstructured-pruned models: a floating-point tensor ``name``
of ``n`` entries, ``k`` of them non-zero, is stored as two tensors in the same file,
``name#values`` (its ``k`` non-zero entries in flat order, same dtype) and either ``name#mask`` (``encoding =
"bitmask"``: ``numpy.packbits`` of the non-zero pattern, ``ceil(n / 8)`` uint8, most significant bit first, padding
bits zero) or ``name#indices`` (``encoding = "indices"``: the ``k`` flat positions as strictly increasing int32),
whichever is smaller. A tensor is stored sparse only when that takes at most :data:`SPARSE_MAX_FRACTION` of its
dense bytes and it has at least :data:`SPARSE_MIN_BYTES` of them; the others, and every tensor of a dense model, are
stored as they are. :func:`load` reads both layouts; it checks each sparse entry against the model's tensor (shape,
counts, index range and order) before it allocates the dense tensor, so hostile metadata cannot make it allocate
more than the model's own size. The rebuilt tensor equals the saved one entry for entry, bit for bit except that
a zero comes back as ``+0.0`` (``-0.0 == 0.0``; magnitude pruning leaves ``-0.0`` where it zeroed a negative
weight, about half its zeros). A file with no sparse tensor is written as format 1, readable by older versions.

Loading runs no code from the file: (1) the base model is ``create_model(**arch)``, or a skeleton passed by the
caller; (2) every recorded module is rebuilt from its config and set at its path; (3) the weights are loaded with
``load_state_dict(strict=True)``. The file is written through :func:`smoothcompress.files.atomic_file` (temporary
file, fsync, rename), so a crash leaves the old file or the new one.

A module of another type comes back as the base model has it, so :func:`save` refuses a model in which such a
module's tensors changed shape, before writing anything: the modules a compression method reshaped (listed in
its record, ``details["reshaped"]``, see :data:`smoothcompress.accounting.RESHAPED`) and, for a registry model,
those whose tensors differ from a fresh ``create_model(**arch)``. Shape changes made by other tools to a
non-registry model are not seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from smoothcompress.accounting import RESHAPED, module_shapes
from smoothcompress.errors import ConfigError, SmoothcompressError
from smoothcompress.extras import require
from smoothcompress.factorized import Factorized, FactorizedConv2d, FactorizedLinear
from smoothcompress.files import atomic_file
from smoothcompress.models import ARCH_ATTR, INPUT_ATTR, create_model
from smoothcompress.onnxfile import export_float
from smoothcompress.record import COMPRESSION_ATTR, CompressionRecord, compression_record
from smoothcompress.selection import set_submodule
from smoothcompress.tensorfactor import CPConv2d, TuckerConv2d

if TYPE_CHECKING:  # calibration loads on first use, not at import
    from smoothcompress.calibration import CalibrationData

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SPARSE_MAX_FRACTION",
    "SPARSE_MIN_BYTES",
    "CheckpointError",
    "save",
    "load",
    "read_metadata",
    "file_kind",
    "export_onnx",
]

FORMAT = "smoothcompress"
"""Value of the ``format`` metadata key of every checkpoint."""

FORMAT_VERSION = 2
"""Newest checkpoint layout written and read (2: sparse tensors); files with a newer version are refused with a
clear error. A file without sparse tensors is written as version 1."""

SPARSE_MAX_FRACTION = 0.75
"""``save(sparse=True)`` stores a tensor sparse when its values and mask or indices take at most this fraction of
its dense bytes (at 32 bits, a tensor with at most about 72% non-zeros)."""

SPARSE_MIN_BYTES = 1024
"""Tensors smaller than this many dense bytes are stored dense: their saving would not pay for the extra entries."""

_SPARSE_SEPARATOR = "#"
_VALUES, _MASK, _INDICES = "values", "mask", "indices"
_ENCODINGS = {"bitmask": _MASK, "indices": _INDICES}
# Indices are used only for tensors with at least one non-zero per _INDEX_SPAN entries (sparser ones get the
# bitmask), so that a file's declared sparse shapes are bounded by the data it stores: n <= _INDEX_SPAN * (nnz + 1)
# for indices, n <= 8 * mask bytes for a bitmask. load checks these bounds before it builds anything.
_INDEX_SPAN = 1024


class CheckpointError(SmoothcompressError):
    """A checkpoint file cannot be loaded (not safetensors, corrupt, truncated, a pickle, not matching the model),
    or a model cannot be saved so that :func:`load` rebuilds it."""


# ---------------------------------------------------------------------------------------------------------
# Module configs: how each known leaf type is described and rebuilt


def _conv_config(m: nn.modules.conv._ConvNd) -> dict:
    w = m.weight
    return {
        "in_channels": int(w.shape[1] * m.groups),
        "out_channels": int(w.shape[0]),
        "kernel_size": list(w.shape[2:]),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": int(m.groups),
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _linear_config(m: nn.Linear) -> dict:
    return {"in_features": int(m.weight.shape[1]), "out_features": int(m.weight.shape[0]), "bias": m.bias is not None}


def _bn_config(m: nn.modules.batchnorm._BatchNorm) -> dict:
    ref = m.weight if m.weight is not None else m.running_mean
    return {
        "num_features": int(ref.shape[0]) if ref is not None else int(m.num_features),
        "eps": float(m.eps),
        "momentum": m.momentum,
        "affine": bool(m.affine),
        "track_running_stats": bool(m.track_running_stats),
    }


def _layer_norm_config(m: nn.LayerNorm) -> dict:
    shape = m.weight.shape if m.weight is not None else m.normalized_shape
    return {
        "normalized_shape": [int(n) for n in shape],
        "eps": float(m.eps),
        "elementwise_affine": bool(m.elementwise_affine),
        "bias": m.bias is not None,
    }


def _group_norm_config(m: nn.GroupNorm) -> dict:
    return {
        "num_groups": int(m.num_groups),
        "num_channels": int(m.weight.shape[0]) if m.weight is not None else int(m.num_channels),
        "eps": float(m.eps),
        "affine": bool(m.affine),
    }


def _embedding_config(m: nn.Embedding) -> dict:
    return {
        "num_embeddings": int(m.weight.shape[0]),
        "embedding_dim": int(m.weight.shape[1]),
        "padding_idx": m.padding_idx,
        "max_norm": m.max_norm,
        "norm_type": float(m.norm_type),
        "scale_grad_by_freq": bool(m.scale_grad_by_freq),
        "sparse": bool(m.sparse),
    }


_KNOWN: dict[str, tuple[type[nn.Module], object]] = {
    "Conv1d": (nn.Conv1d, _conv_config),
    "Conv2d": (nn.Conv2d, _conv_config),
    "Conv3d": (nn.Conv3d, _conv_config),
    "Linear": (nn.Linear, _linear_config),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_config),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_config),
    "BatchNorm3d": (nn.BatchNorm3d, _bn_config),
    "LayerNorm": (nn.LayerNorm, _layer_norm_config),
    "GroupNorm": (nn.GroupNorm, _group_norm_config),
    "Embedding": (nn.Embedding, _embedding_config),
    "FactorizedConv2d": (FactorizedConv2d, FactorizedConv2d.config),
    "FactorizedLinear": (FactorizedLinear, FactorizedLinear.config),
    "CPConv2d": (CPConv2d, CPConv2d.config),
    "TuckerConv2d": (TuckerConv2d, TuckerConv2d.config),
}


def _rebuildable(model: nn.Module) -> dict[str, bool]:
    """``{path: whether load rebuilds the module}``: a module of a known type, or one inside a Factorized module
    (recorded as a whole)."""
    out, inside = {}, []
    for name, m in model.named_modules():
        within = any(name.startswith(p) for p in inside)
        if isinstance(m, Factorized):
            inside.append(name + ".")
        kind = type(m).__name__
        out[name] = within or (kind in _KNOWN and type(m) is _KNOWN[kind][0])
    return out


def _reference_shapes(arch) -> dict[str, dict[str, tuple[int, ...]]] | None:
    """:func:`~smoothcompress.accounting.module_shapes` of a fresh registry model (on the meta device: no memory),
    or ``None`` when ``arch`` does not name one that builds."""
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs"), dict):
        return None
    try:
        with torch.device("meta"):
            return module_shapes(create_model(arch["name"], **arch["kwargs"]))
    except Exception:  # noqa: BLE001 - a registry entry that cannot build is load's error to report, not save's
        return None


def _check_rebuildable(model: nn.Module, path: Path) -> None:
    """Refuse a model in which a module that :func:`load` cannot rebuild has tensors of a changed shape."""
    record = compression_record(model)
    changed = set(record.details.get(RESHAPED, ())) if record is not None else set()
    reference = _reference_shapes(getattr(model, ARCH_ATTR, None))
    if reference is not None:
        changed |= {name for name, shapes in module_shapes(model).items() if reference.get(name) != shapes}
    rebuildable = _rebuildable(model)
    bad = [name for name in rebuildable if name in changed and not rebuildable[name]]
    if bad:
        named = dict(model.named_modules())
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"cannot save {path}: module {bad[0]!r} ({type(named[bad[0]]).__name__}){more} changed shape and load "
            f"rebuilds only {', '.join(_KNOWN)}, so the file could not be loaded; leave that layer out of the "
            "compression (exclude=...) or save model.state_dict() by other means"
        )


def _module_records(model: nn.Module) -> dict[str, dict]:
    """``{path: {"type", "config"}}`` for every known leaf (a Factorized module counts as one leaf)."""
    records, inside = {}, []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p) for p in inside):
            continue
        if isinstance(m, Factorized):
            inside.append(name + ".")
        kind = type(m).__name__
        if kind in _KNOWN and type(m) is _KNOWN[kind][0]:
            records[name] = {"type": kind, "config": _KNOWN[kind][1](m)}
    return records


def _build(kind: str, config: Mapping, path: str) -> nn.Module:
    if kind not in _KNOWN:
        raise CheckpointError(f"module {path!r} has unknown type {kind!r}; known: {', '.join(_KNOWN)}")
    if not isinstance(config, Mapping):
        raise CheckpointError(f"module {path!r}: config must be a JSON object, got {type(config).__name__}")
    cls = _KNOWN[kind][0]
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError, OverflowError, IndexError, AttributeError, KeyError) as e:
        raise CheckpointError(f"module {path!r} ({kind}) cannot be rebuilt from its recorded config: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# Checksum of the tensors


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Sparse tensors: non-zero values plus a bitmask or flat indices


def _sparse_key(name: str, part: str) -> str:
    return f"{name}{_SPARSE_SEPARATOR}{part}"


def _encode_sparse(t: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """``(entry, {part: tensor})`` of a contiguous CPU tensor worth storing sparse, else ``None``."""
    n, size = t.numel(), t.element_size()
    if not t.is_floating_point() or n * size < SPARSE_MIN_BYTES:
        return None
    flat = t.reshape(-1)
    nonzero = flat != 0  # -0.0 counts as zero: magnitude pruning leaves it where it zeroed a negative weight
    k = int(nonzero.sum())
    mask_bytes = (n + 7) // 8
    index_bytes = 4 * k if n < 2**31 and n <= _INDEX_SPAN * (k + 1) else mask_bytes  # int32 indices: 2**31
    if k * size + min(mask_bytes, index_bytes) > SPARSE_MAX_FRACTION * n * size:
        return None
    parts = {_VALUES: flat[nonzero].clone()}
    if index_bytes < mask_bytes:
        encoding, parts[_INDICES] = "indices", nonzero.nonzero().reshape(-1).to(torch.int32)
    else:
        encoding, parts[_MASK] = "bitmask", torch.from_numpy(np.packbits(nonzero.numpy()))
    return {"shape": list(t.shape), "encoding": encoding, "nnz": k}, parts


def _decode_sparse(
    name: str, entry, tensors: dict[str, torch.Tensor], expected: torch.Tensor | None, path: Path
) -> torch.Tensor:
    """The dense tensor ``name`` rebuilt from its parts, which are removed from ``tensors``.

    Everything is checked against ``expected`` (the model's tensor) and the stored parts before the dense tensor is
    allocated; a mismatch raises :class:`CheckpointError`.
    """
    where = f"{path}: sparse tensor {name!r}"
    if expected is None:
        raise CheckpointError(f"{where} is not a tensor of the model; the file does not match the model")
    if not isinstance(entry, dict) or set(entry) != {"shape", "encoding", "nnz"}:
        raise CheckpointError(f"{where}: its entry must hold exactly 'shape', 'encoding' and 'nnz'; file damaged")
    shape, encoding, k = entry["shape"], entry["encoding"], entry["nnz"]
    if encoding not in _ENCODINGS:
        raise CheckpointError(f"{where}: unknown encoding {encoding!r}; known: {', '.join(_ENCODINGS)}")
    if not isinstance(shape, list) or shape != list(expected.shape):
        raise CheckpointError(f"{where}: shape {shape!r} does not match the model's {list(expected.shape)}")
    n = expected.numel()
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= n:
        raise CheckpointError(f"{where}: nnz {k!r} is not a count between 0 and {n}; the file is damaged")
    values = tensors.pop(_sparse_key(name, _VALUES), None)
    position = tensors.pop(_sparse_key(name, _ENCODINGS[encoding]), None)
    if values is None or position is None:
        raise CheckpointError(f"{where}: its {_VALUES} or {_ENCODINGS[encoding]} tensor is missing; file damaged")
    if values.dim() != 1 or values.numel() != k or not values.is_floating_point():
        raise CheckpointError(f"{where}: {values.numel()} stored values ({values.dtype}) for nnz {k}; file damaged")
    if encoding == "bitmask":
        if position.dtype != torch.uint8 or position.dim() != 1 or position.numel() != (n + 7) // 8:
            raise CheckpointError(f"{where}: the mask must be {(n + 7) // 8} uint8 for {n} entries; file damaged")
        shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=position.device)
        bits = ((position.unsqueeze(1) >> shifts) & 1).reshape(-1).bool()
        if bool(bits[n:].any()) or int(bits.sum()) != k:
            raise CheckpointError(f"{where}: the mask has {int(bits.sum())} set bits for nnz {k}; file damaged")
        where_nonzero = bits[:n]
    else:
        if position.dtype != torch.int32 or position.dim() != 1 or position.numel() != k:
            raise CheckpointError(f"{where}: the indices must be {k} int32; the file is damaged")
        where_nonzero = position.long()
        if k and (int(where_nonzero[0]) < 0 or int(where_nonzero[-1]) >= n or bool((where_nonzero.diff() <= 0).any())):
            raise CheckpointError(f"{where}: indices must increase strictly within [0, {n}); the file is damaged")
    dense = torch.zeros(n, dtype=values.dtype, device=values.device)
    dense[where_nonzero] = values
    return dense.reshape(expected.shape)


# ---------------------------------------------------------------------------------------------------------
# save / load


def save(
    model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None, *, sparse: bool = False
) -> Path:
    """Save a model (dense, compressed or pruned) as one safetensors file with its architecture as metadata.

    Parameters
    ----------
    model : nn.Module
        Any model. A registry-built model (see :func:`smoothcompress.create_model`) can later be loaded with
        ``load(path)`` alone; any other model needs a skeleton, ``load(path, model=MyNet())``.
    path : str or PathLike
        Output file, conventionally ``*.safetensors``. Written atomically and durably (temporary file, fsync,
        rename): a crash leaves the old file or the new one.
    metadata : mapping of str to str, optional
        Extra string entries to store, e.g. ``{"dataset": "cifar10"}``; keys must not clash with the reserved
        ones (``format``, ``format_version``, ``arch``, ``input``, ``modules``, ``compression``,
        ``weights_sha256``, ``sparse``). The model's input card (``sc_input``, set by the trainer:
        :func:`smoothcompress.inputs.record_input`) is written as ``input`` and restored by :func:`load`.
    sparse : bool
        Store each floating-point tensor with many zeros (an unstructured-pruned weight) as its non-zero values
        plus a bitmask or flat indices, whichever is smaller (see the module docstring); :func:`load` rebuilds
        it exactly. Tensors with too few zeros are stored dense, so a dense model gives a plain file.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        A module of a type that :func:`load` cannot rebuild (see the module docstring) changed shape, so the file
        could not be loaded; nothing is written. Or a reserved or non-string ``metadata`` entry; with ``sparse``, a
        tensor name containing ``"#"``.
    """
    path = Path(path)
    _check_rebuildable(model, path)
    state = model.state_dict()
    tensors, seen = {}, set()
    for name, t in state.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        # safetensors refuses tensors that share memory (tied weights) and non-contiguous ones (channels_last
        # weights): store a packed copy of those
        if key in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        tensors[name] = t
        seen.add(key)
    entries = {}
    if sparse:
        if clash := next((name for name in tensors if _SPARSE_SEPARATOR in name), None):
            raise ValueError(f"tensor name {clash!r} contains {_SPARSE_SEPARATOR!r}; save it with sparse=False")
        for name in list(tensors):
            encoded = _encode_sparse(tensors[name])
            if encoded is not None:
                entries[name], parts = encoded
                del tensors[name]
                tensors.update({_sparse_key(name, part): t for part, t in parts.items()})
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION if entries else 1),
        "arch": json.dumps(getattr(model, ARCH_ATTR, None)),
        "input": json.dumps(getattr(model, INPUT_ATTR, None)),
        "modules": json.dumps(_module_records(model)),
        "compression": json.dumps(record.to_dict() if (record := compression_record(model)) else None),
        "weights_sha256": _checksum(tensors),
    }
    if entries:
        meta["sparse"] = json.dumps(entries)
    for k, v in (metadata or {}).items():
        if k in meta or k == "sparse":
            raise ConfigError(f"metadata key {k!r} is reserved")
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    with atomic_file(path) as f:
        f.write(safetensors_bytes(tensors, metadata=meta))
    return path


def file_kind(path: str | os.PathLike) -> str:
    """What a file is, from its first bytes: ``"safetensors"``, ``"pytorch-pickle"`` (``torch.save``'s zip or
    legacy pickle), ``"folder"``, ``"missing"`` or ``"other"``. Reads at most the safetensors header's length."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        return "missing"
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and 0 < struct.unpack("<Q", head[:8])[0] <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "pytorch-pickle"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return "pytorch-pickle"
        except (zipfile.BadZipFile, OSError):
            pass
    return "other"


def _open_metadata(path: Path) -> dict[str, str]:
    kind = file_kind(path)
    if kind == "folder" and (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is a run folder; give its model file, {path / 'model.safetensors'}")
    if kind in ("folder", "missing"):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if kind == "pytorch-pickle":
        beside = path.parent / "model.safetensors"
        hint = f"; the model of this run is {beside}" if beside.is_file() else ""
        raise CheckpointError(
            f"{path} is a PyTorch pickle (a training checkpoint?); smoothcompress reads .safetensors files written "
            f"by smoothcompress save/train{hint}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - the safetensors reader raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a smoothcompress checkpoint (no format={FORMAT!r} metadata); "
            "load its tensors with safetensors.torch.load_file and model.load_state_dict instead"
        )
    return meta


def _json_field(meta: Mapping[str, str], key: str, path: Path):
    if key not in meta:
        raise CheckpointError(f"{path}: metadata entry {key!r} is missing; the file is damaged")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata entry {key!r} is not valid JSON ({e}); the file is damaged") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of a checkpoint, without loading its tensors.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save`.

    Returns
    -------
    dict
        ``format_version`` (int), ``arch``, ``modules``, ``compression``, ``sparse`` (decoded JSON; ``sparse`` is
        ``{}`` when no tensor is stored sparse) and any extra string entries given to :func:`save`.

    Raises
    ------
    CheckpointError
        The file is not a readable smoothcompress checkpoint, or was written by a newer format version.
    """
    path = Path(path)
    meta = _open_metadata(path)
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written with checkpoint format {version}, newer than this smoothcompress reads "
            f"({FORMAT_VERSION}); upgrade smoothcompress"
        )
    out = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    out["format_version"] = version
    for key in ("arch", "modules", "compression"):
        out[key] = _json_field(meta, key, path)
    if not isinstance(out["modules"], dict):
        raise CheckpointError(f"{path}: metadata entry 'modules' must be a JSON object")
    out["input"] = _json_field(meta, "input", path) if "input" in meta else None
    if out["input"] is not None and not isinstance(out["input"], dict):
        raise CheckpointError(f"{path}: metadata entry 'input' must be a JSON object")
    out["sparse"] = _json_field(meta, "sparse", path) if "sparse" in meta else {}
    if not isinstance(out["sparse"], dict):
        raise CheckpointError(f"{path}: metadata entry 'sparse' must be a JSON object")
    return out


def _base_model(arch, path: Path) -> nn.Module:
    if arch is None:
        raise CheckpointError(
            f"{path} holds a model that was not built by smoothcompress.create_model, so its architecture is not "
            "recorded; pass a skeleton of the same class: load(path, model=MyNet(...))"
        )
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs"), dict):
        raise CheckpointError(f"{path}: metadata entry 'arch' must be {{'name': str, 'kwargs': {{...}}}}, got {arch!r}")
    try:
        return create_model(arch["name"], **arch["kwargs"])
    except (TypeError, ValueError, RuntimeError, OverflowError, IndexError, AttributeError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model {arch['name']!r} from the registry: {e}") from None


def _record(raw, path: Path) -> CompressionRecord | None:
    """The file's compression record (``None`` for a dense model); anything else is a :class:`CheckpointError`."""
    if raw is None:
        return None
    try:
        return CompressionRecord.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata entry 'compression' is not a compression record: {e}") from None


def _module_list(modules: Mapping, path: Path) -> list[tuple[str, str, Mapping]]:
    """The ``modules`` metadata entry as ``(name, type, config)`` triples, each checked to be well formed."""
    out = []
    for name, rec in modules.items():
        if not isinstance(rec, dict) or "type" not in rec or "config" not in rec:
            raise CheckpointError(f"{path}: record of module {name!r} must have 'type' and 'config'")
        if not name or not all(part.isidentifier() or part.isdigit() for part in name.split(".")):
            raise CheckpointError(f"{path}: {name!r} is not a module path (dotted names); the file is damaged")
        out.append((name, rec["type"], rec["config"]))
    return out


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the file, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 - the safetensors reader raises its own error types
        raise CheckpointError(f"{path}: cannot read the tensors (corrupt or truncated?): {e}") from None


def _check_stored(module: nn.Module, prefix: str, stored: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """Refuse a module (built on the meta device) whose tensors are not stored in the file with the same shapes."""
    for key, t in module.state_dict().items():
        key = f"{prefix}.{key}" if prefix else key
        if key not in stored:
            raise CheckpointError(
                f"{path}: the weights do not fit the model its metadata describes: it has a tensor {key!r} that the "
                "file does not store; the file is damaged"
            )
        if tuple(t.shape) != stored[key]:
            raise CheckpointError(
                f"{path}: the weights do not fit the model its metadata describes: tensor {key!r} has shape "
                f"{list(stored[key])} in the file but {list(t.shape)} in the model; the file is damaged"
            )


def _sparse_shapes(sparse: Mapping, stored: Mapping[str, tuple[int, ...]], path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes the well-formed sparse entries declare, each bounded by the parts the file stores (see
    ``_INDEX_SPAN``): a declared size beyond that bound raises :class:`CheckpointError` before anything is built.
    Malformed entries are left out here; loading refuses them with a message naming what is wrong."""
    shapes = {}
    for name, entry in sparse.items():
        if not isinstance(entry, dict) or entry.get("encoding") not in _ENCODINGS:
            continue
        shape, k = entry.get("shape"), entry.get("nnz")
        part = stored.get(_sparse_key(name, _ENCODINGS[entry["encoding"]]))
        valid = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        if not valid or part is None or len(part) != 1 or not isinstance(k, int) or isinstance(k, bool):
            continue
        # a coarse bound against absurd sizes (twice what the parts allow); the exact checks come when decoding
        bound = 2 * (8 * part[0] if entry["encoding"] == "bitmask" else _INDEX_SPAN * (k + 1))
        if math.prod(shape) > bound:
            raise CheckpointError(
                f"{path}: sparse tensor {name!r} declares {math.prod(shape)} entries, more than its stored parts can "
                "hold; the file is damaged"
            )
        shapes[name] = tuple(shape)
    return shapes


def _check_sizes(path: Path, arch, records: list[tuple[str, str, Mapping]], sparse: Mapping) -> None:
    """Refuse, before allocating anything, a file whose recorded architecture would build tensors that the file
    does not store (absurd widths or ranks in damaged or hostile metadata): every recorded module, and with
    ``arch`` the whole registry model, is built on the meta device and its shapes compared with the stored ones
    (a sparse tensor's with the shape its entry declares, bounded by its stored parts)."""
    stored = _stored_shapes(path)
    stored = {**stored, **_sparse_shapes(sparse, stored, path)}
    with torch.device("meta"):
        probe = _base_model(arch, path) if arch is not None else None
        for name, kind, cfg in records:
            built = _build(kind, cfg, name)
            if probe is not None:
                _set_module(probe, name, built, path)
            _check_stored(built, name, stored, path)
    if probe is not None:
        _check_stored(probe, "", stored, path)


def _set_module(model: nn.Module, path: str, new: nn.Module, file: Path) -> None:
    try:
        set_submodule(model, path, new)
    except (AttributeError, ValueError):
        raise CheckpointError(
            f"{file}: module {path!r} of the checkpoint has no parent {path.rpartition('.')[0]!r} in the model; "
            "the model does not match the file"
        ) from None


def load(path: str | os.PathLike, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save`, without unpickling anything.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save`.
    model : nn.Module, optional
        A skeleton to load into, needed when the saved model was not built by the registry. It is modified in
        place: layers recorded in the file (for example factorized or pruned ones) replace the skeleton's at the
        same paths, then the weights are loaded. Default: rebuild from the recorded registry architecture.
    device : str or torch.device
        Where to put the weights.

    Returns
    -------
    nn.Module
        The model in eval mode, in the saved dtype, with ``sc_arch`` and ``sc_compression`` (a
        :class:`~smoothcompress.record.CompressionRecord`) restored.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        The file is not safetensors, is truncated or corrupt (checksum), is not a smoothcompress checkpoint, was
        written by a newer format, needs a skeleton, does not match the model (missing, unexpected or
        mis-shaped tensors), or has a sparse tensor whose entry does not fit its parts or the model.
    """
    path = Path(path)
    meta = read_metadata(path)
    record = _record(meta["compression"], path)
    records = _module_list(meta["modules"], path)
    _check_sizes(path, meta["arch"] if model is None else None, records, meta["sparse"] or {})
    base = model if model is not None else _base_model(meta["arch"], path)
    current = dict(base.named_modules())
    for name, kind, cfg in records:
        old = current.get(name)
        if kind in _KNOWN and type(old) is _KNOWN[kind][0] and _KNOWN[kind][1](old) == cfg:
            continue  # the base already has this exact layer
        _set_module(base, name, _build(kind, cfg, name), path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read the tensors (corrupt or truncated?): {e}") from None
    expected = meta.get("weights_sha256")
    if expected is not None and _checksum(tensors) != expected:
        raise CheckpointError(f"{path}: the tensors do not match their checksum; the file is corrupt")
    if meta["sparse"]:
        state = base.state_dict()
        for name, entry in meta["sparse"].items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name!r} is stored both dense and sparse; the file is damaged")
            tensors[name] = _decode_sparse(name, entry, tensors, state.get(name), path)
    for key, t in base.state_dict().items():
        if key in tensors and tensors[key].is_floating_point() != t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is stored as {tensors[key].dtype}, the model has {t.dtype}")
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    base.to(device=device, **({"dtype": dtypes.pop()} if len(dtypes) == 1 else {}))
    try:
        base.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{path}: the weights do not fit the model: {detail[:1500]}") from None
    if record is not None:
        setattr(base, COMPRESSION_ATTR, record)
    if meta["input"] is not None:
        setattr(base, INPUT_ATTR, meta["input"])
    return base.eval()


# ---------------------------------------------------------------------------------------------------------
# ONNX


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: Iterable[int] | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    *,
    example_input: torch.Tensor | tuple | Mapping | None = None,
    int8: bool | str = False,
    calibration: CalibrationData | None = None,
) -> Path:
    """Export a model to ONNX with the ``torch.export``-based exporter (``dynamo=True``, uses onnxscript).

    Parameters
    ----------
    model : nn.Module
        Dense, compressed or pruned. Exported in eval mode; its training flag is restored afterwards.
    path : str or PathLike
        Output ``.onnx`` file: one self-contained file, weights included, for weights up to
        :data:`~smoothcompress.onnxfile.ONNX_SIZE_LIMIT` bytes (about 2 GB); beyond that the weights go to
        ``NAME.onnx.data`` beside it. Written atomically (a temporary file renamed): a crash leaves the old file or
        the new one. The exporter's known harmless warnings
        (:data:`~smoothcompress.onnxfile.HARMLESS_EXPORT_MESSAGES`) are not shown, and its per-node debug
        metadata (source stack traces with the exporting machine's paths, module and FX node names) is left out.
    input_shape : tuple of int, optional
        Full input shape with the batch dimension, e.g. ``(1, 3, 32, 32)``; the model is traced on a random
        normal input of that shape in its dtype. The graph's input is named ``"input"`` and its output
        ``"output"``. Needed unless ``example_input`` is given.
    dynamic_batch : bool
        Let the batch dimension vary at inference time (exported as the symbolic dimension ``"batch"``).
    opset_version : int, optional
        ONNX opset; default: the exporter's.
    example_input : Tensor, tuple or dict of Tensor, optional
        The input to trace with instead (:func:`smoothcompress.inputs.as_example`), e.g. int64 token ids
        ``(batch, seq)`` for a text model such as BERT, a tuple of positional tensors, or a dict of keyword tensors
        ``{"input_ids": ..., "attention_mask": ...}`` (the graph's inputs are then named after the model's
        arguments); a batch of 1 is repeated to 2 for a dynamic batch, and every tensor whose first dimension is
        the batch gets the symbolic dimension ``"batch"``.
    int8 : bool or {"static", "dynamic"}
        Write an int8 file instead, by :func:`smoothcompress.quantize.quantize_onnx` (onnxruntime's
        post-training quantization, QDQ format, per-channel weights): ``True`` or ``"static"`` calibrates the
        activation ranges on ``calibration``, ``"dynamic"`` quantizes the Linear weights only and needs no data.
    calibration : Dataset, Loader, iterable of batches or float Tensor, optional
        Calibration inputs of ``int8`` static mode (a Dataset gives 256 images of its training split only).

    Returns
    -------
    Path
        The written file, self-contained (its weights embedded up to about 2 GB, beyond that in ``NAME.onnx.data``
        beside it); ``onnxruntime.InferenceSession(path)`` runs it.

    Raises
    ------
    ValueError
        No ``input_shape`` nor ``example_input``, a shape without a batch dimension or with a size below 1, or an
        input the model cannot take (one forward pass is run first; the message quotes the model's error).
    """
    require("onnxscript", "onnx")  # the exporter; one line naming the extra when it is missing
    path = Path(path)
    if int8:
        from smoothcompress.quantize import quantize_onnx  # imported here: it loads onnxruntime

        if int8 is not True and int8 not in ("static", "dynamic"):
            raise ValueError(f"int8 must be False, True, 'static' or 'dynamic', got {int8!r}")
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            raise ConfigError("an int8 file has one graph input: pass example_input as one tensor")
        return quantize_onnx(
            model,
            path,
            calibration,
            input_shape=input_shape,
            mode="static" if int8 is True else int8,
            dynamic_batch=dynamic_batch,
            opset_version=opset_version,
            example_input=example_input,
        )
    return export_float(model, path, input_shape, dynamic_batch, opset_version, example_input=example_input)
