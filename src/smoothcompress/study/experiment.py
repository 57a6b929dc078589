"""Sweeps: train a grid of models, compress each by every method at every rate, write one results row per cell.

A sweep is described by a TOML file (see ``configs/``)::

    out = "runs/demo"                      # everything the sweep writes goes here
    [train]                                # TrainConfig fields shared by every run
    dataset = "digits"
    model = "mlp"
    epochs = 30
    [grid]
    seeds = [0]                            # default seeds of every regularizer entry
    regularizers = [                       # kind x weight x seed; weight may be a list
        { kind = "none", weight = 0.0, seeds = [0, 1] },
        { kind = "nuclear", weight = [1e-3, 1e-2] },
        { kind = "second", weight = 1e-3, reg_axes = ["out"] },   # any reg_* TrainConfig key, for this entry
    ]
    variants = [{ width = 16 }, { width = 32 }]   # optional: other models or widths, for every entry
    [compress]
    rates = [0.3, 0.5, 0.7, 0.9]
    methods = [{ method = "svd", allocation = "global", scheme = "channel" }, { method = "svd-data+bn" }]
    calibration_images = 2048              # training images for the methods that use data (default 2048)

A file may start from another: ``extends = "cifar10-paper"`` (a preset name, or a path relative to the extending
file) takes every table of that sweep file and lets this one override it key by key (a list such as ``methods`` is
replaced whole). ``out`` and ``description`` are never inherited, and a file that extends another must name its own
``out``, so that two sweeps never share a folder. See :func:`read_sweep_file`.

A ``methods`` entry names a registered compression method and sets its options (see
:mod:`smoothcompress.methods`). Methods
that use data (``svd+bn``, ``svd-data``, ``svd-data+bn``, ``magnitude+bn``, ``filter+bn``) draw
``calibration_images`` images from the training split (never the validation or test split; forward passes only,
no gradient step); a data-aware run's calibration is computed once and reused at every rate, and their rows
record ``calibration_images`` and ``calibration_split``.

Layout of ``out``: ``runs/<tag>/`` holds each training run (model, metrics, checkpoint), ``results.jsonl`` one row
per (run, method, rate), ``spectra.jsonl`` one row per run with singular-value spectra and a weight slice for the
report, and ``sweep.toml`` the sweep table as last run (an ``extends`` chain merged, ``out`` and ``train.data`` as
given, its fingerprint in the first line). Every row carries its provenance (commit, device, dataset name and
sha256, seed, wall time).

The sweep is resumable at two levels: an interrupted training run resumes from its last checkpoint, and finished
cells (rows already in ``results.jsonl``) are skipped. A run folder remembers the settings it was trained with
(``config.toml``): rerunning with changed training settings is an error naming the differences (use a new
``out``), never a silent reuse of models trained otherwise. While a sweep runs it holds ``out/.lock``: a second
sweep into the same folder is refused (a lock left by a killed sweep is taken over). Paths such as
``train.data`` are relative to the current directory.

Sharded sweeps: ``sweep(config, shard=(i, n))`` (``smoothcompress sweep CONFIG --shard i/n``) runs the i-th of n
disjoint slices of the grid, so that an array job (``--shard $SLURM_ARRAY_TASK_ID/4`` with ``--array=1-4``, a loop
over hosts) splits the work. Shards are numbered from 1. The unit is the training run (every compression row belongs
to one trained model): the runs, sorted by seed and then by tag, are dealt round-robin, so the slices depend only on
the grid and ``n``, never on what is already done, and more seeds (larger than those run) leave every run where it
was: a sweep grows by seeds without a new out folder. Shard i of n is a sweep folder of its own,
``out/shard-i-of-n/`` (its ``results.jsonl``, ``spectra.jsonl``, ``runs/`` and lock), so shards on several hosts can
share ``out`` and each resumes exactly as an unsharded sweep does; ``--shard 1/1`` is the unsharded sweep. Keep
``n`` and the grid fixed for a sharded sweep's life (seeds may grow): a shard refuses to resume when the grid has
changed so much that its folder holds runs another shard now owns. :func:`smoothcompress.study.report.load_results`
merges the shards of ``out``. Every row records its ``shard`` and ``shards`` (i and n; 1 and 1 unsharded) and the
``sweep_fingerprint`` of :meth:`SweepConfig.fingerprint`, by which the report refuses to merge shards of different
configs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcompress import io
from smoothcompress.accounting import RateUnreachable, count_flops, count_params
from smoothcompress.errors import ConfigError
from smoothcompress.files import FolderLock, append_jsonl, read_jsonl, write_json
from smoothcompress.inputs import CALIBRATION_IMAGES  # default [compress] calibration_images
from smoothcompress.methods import Method, method_from_dict
from smoothcompress.provenance import git_commit, provenance
from smoothcompress.study.data import Dataset, split_validation
from smoothcompress.study.results import cell_key
from smoothcompress.study.training import (
    TrainConfig,
    check_same_settings,
    evaluate,
    load_dataset_for,
    read_toml,
    resolve_device,
    write_toml,
)
from smoothcompress.study.training import run as train_run
from smoothcompress.study.training.config import RUNTIME_KEYS

__all__ = [
    "RunSpec",
    "SweepConfig",
    "sweep",
    "PRESETS_DIR",
    "PENALTY_OPTIONS",
    "resolve_config",
    "read_sweep_file",
    "shard_folder",
    "parse_shard",
]

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
"""Built-in sweep presets (``demo``, ``cifar10-cpu``, ...); ``configs/`` in the repository points here."""

ROW_OPTIONS = ("allocation", "scheme")
"""Method options every results row has a column for (``None`` where the method has no such option)."""
_SECTIONS = {"out", "description", "train", "grid", "compress", "report"}

PENALTY_OPTIONS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith("reg_"))
"""TrainConfig keys a ``[grid] regularizers`` entry may set for its own runs (e.g. ``reg_axes = ["out"]``)."""


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")


def _text(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid: shared settings plus its regulariser, weight, seed and variant."""

    reg: str
    weight: float
    seed: int
    variant: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs overriding [train], e.g. (("width", 16),)

    def train_overrides(self) -> dict[str, Any]:
        """The TrainConfig fields this run sets on top of the sweep's ``[train]``."""
        return {**dict(self.variant), "reg": self.reg, "weight": float(self.weight), "seed": int(self.seed)}

    def variant_name(self) -> str:
        """The variant as text, ``""`` for none, e.g. ``"lr=0.2"`` or ``"reg_axes=out"`` (model and width are named
        separately; a list value is joined by ``+``)."""
        return ",".join(f"{k}={_text(v)}" for k, v in self.variant if k not in ("model", "width"))

    def tag(self, train: dict[str, Any]) -> str:
        """Folder name of the run, e.g. ``"resnet18-w16-nuclear0.001-s0"``."""
        v = {**train, **dict(self.variant)}
        parts = [str(v.get("model", "model"))]
        if "width" in v:
            parts.append(f"w{v['width']}")
        parts += [f"{k}{_text(val)}" for k, val in self.variant if k not in ("model", "width")]
        parts += [self.reg if self.reg == "none" else f"{self.reg}{self.weight:g}", f"s{self.seed}"]
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep file. Build it with :meth:`from_toml` or :meth:`from_dict`; every run is validated."""

    out: Path
    train: dict[str, Any]
    runs: tuple[RunSpec, ...]
    rates: tuple[float, ...]
    methods: tuple[Method, ...]
    spectra_layers: int = 3
    source: str = ""
    calibration_images: int = 2048  # training images for the methods that use data (forward passes only)
    table: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    """The sweep table it was parsed from (an ``extends`` chain merged; ``None`` for a config built otherwise); each
    sweep folder keeps it as ``sweep.toml``."""

    @classmethod
    def from_toml(cls, path: str | os.PathLike, out: str | os.PathLike | None = None) -> SweepConfig:
        """Read a sweep TOML file or a preset name (see :func:`resolve_config`)."""
        path = resolve_config(path)
        table = read_sweep_file(path, out_given=out is not None)
        try:
            cfg = cls.from_dict(table, out=out)
        except ConfigError as e:
            chain = " or a file it extends" if "extends" in read_toml(path) else ""
            raise ConfigError(f"{path}{chain}: {e}") from None
        return replace(cfg, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], out: str | os.PathLike | None = None) -> SweepConfig:
        """Parse and validate; any mistake raises ``ValueError`` naming it, before anything runs.

        An ``extends`` key names its sweep file as :func:`read_sweep_file` does, a relative path from the current
        directory.
        """
        if "extends" in raw:
            raw = _extend(raw, Path.cwd(), [], out_given=out is not None)
        _check_keys("sweep file", raw, _SECTIONS)
        train = dict(raw.get("train", {}))
        grid = raw.get("grid", {})
        _check_keys("[grid]", grid, {"seeds", "regularizers", "variants"})
        default_seeds = list(grid.get("seeds", [0]))
        variants = []
        for v in grid.get("variants", [{}]):
            if any(isinstance(x, list | dict) for x in v.values()):
                raise ConfigError(f"[grid] variant {v}: values must be single numbers or strings")
            variants.append(tuple(sorted(v.items())))
        runs: list[RunSpec] = []
        for entry in grid.get("regularizers", [{"kind": "none"}]):
            _check_keys("[grid] regularizers entry", entry, {"kind", "weight", "seeds", *PENALTY_OPTIONS})
            if "kind" not in entry:
                raise ConfigError(f"regularizer entry {entry} has no 'kind'")
            weights = entry.get("weight", 0.0)
            options = tuple(
                (k, tuple(v) if isinstance(v, list) else v) for k, v in entry.items() if k in PENALTY_OPTIONS
            )
            for variant in variants:
                both = sorted({k for k, _ in variant} & {k for k, _ in options})
                if both:
                    raise ConfigError(
                        f"[grid] {', '.join(both)} is set both by a variant and by the {entry['kind']} entry; "
                        "set it in one place"
                    )
            for variant, weight, seed in itertools.product(
                variants, weights if isinstance(weights, list) else [weights], entry.get("seeds", default_seeds)
            ):
                runs.append(RunSpec(entry["kind"], float(weight), int(seed), tuple(sorted(variant + options))))
        for spec in runs:  # every run's full training config must be valid (kinds, weights, variant keys)
            TrainConfig.from_dict({**train, **spec.train_overrides()})
        comp = raw.get("compress", {})
        _check_keys("[compress]", comp, {"rates", "methods", "calibration_images"})
        rates = tuple(float(r) for r in comp.get("rates", [0.5, 0.7, 0.9]))
        if any(not 0 < r < 1 for r in rates):
            raise ConfigError(f"compress.rates must lie in (0, 1), got {list(rates)}")
        report = raw.get("report", {})
        _check_keys("[report]", report, {"spectra_layers"})
        return cls(
            out=Path(out or raw.get("out", "runs/sweep")),
            train=train,
            runs=tuple(dict.fromkeys(runs)),
            rates=rates,
            methods=tuple(_method(m) for m in comp.get("methods", [{"method": "svd"}])),
            calibration_images=int(comp.get("calibration_images", CALIBRATION_IMAGES)),
            spectra_layers=int(report.get("spectra_layers", 3)),
            table=copy.deepcopy(raw),
        )

    def fingerprint(self) -> str:
        """A short hash of the parsed config; equal for configs that differ only in where or how fast they run.

        It covers the training settings each run is given (``[train]`` plus its regulariser, weight, seed and
        variant; values as :class:`TrainConfig` reads them, so ``lr = 1`` equals ``lr = 1.0``; defaults left
        unwritten are not hashed, nor a ``None`` given for a key whose default is ``None``, as a TOML file cannot
        write it), the rates, the methods and their options, ``calibration_images`` and
        ``spectra_layers``. It leaves out ``out``, ``source`` and the runtime training keys (``data``,
        ``device``, ... see ``training.config.RUNTIME_KEYS``) and method options at their defaults (so that a new
        option leaves the fingerprints of existing sweeps alone). The order of the runs, rates and methods in the
        file does not matter. Returns 16 hex digits of a sha256.
        """

        defaults = TrainConfig().to_dict()

        def train(spec: RunSpec) -> dict[str, Any]:
            given = {**self.train, **spec.train_overrides()}
            resolved = TrainConfig.from_dict(given).to_dict()
            unwritten = {k for k, v in given.items() if v is None and defaults.get(k) is None}  # as if left out
            return {k: resolved[k] for k in given if k in resolved and k not in RUNTIME_KEYS | unwritten}

        canonical = {
            "runs": sorted(json.dumps(train(s), sort_keys=True) for s in self.runs),
            "rates": sorted(set(self.rates)),
            "methods": sorted(json.dumps({"method": m.name, **_set_options(m)}, sort_keys=True) for m in self.methods),
            "calibration_images": self.calibration_images,
            "spectra_layers": self.spectra_layers,
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]

    def shard_runs(self, shard: tuple[int, int]) -> tuple[RunSpec, ...]:
        """The runs of shard ``(i, n)`` (1-based), in the file's order: runs sorted by seed and tag, dealt
        round-robin (so runs of new, larger seeds take the places after the old ones).

        The n slices are disjoint and cover the grid. Raises ``ValueError`` when ``n`` exceeds the number of runs.
        """
        i, n = parse_shard(shard)
        if n > len(self.runs):
            raise ConfigError(
                f"shard {i}/{n}: the grid has only {len(self.runs)} training run(s), the unit of a shard; "
                f"use at most {len(self.runs)} shards"
            )
        owned = set(sorted(self.runs, key=lambda s: (s.seed, s.tag(self.train)))[i - 1 :: n])
        return tuple(s for s in self.runs if s in owned)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``(i, n)`` from ``"i/n"`` or a pair, checked: shards are numbered 1 to n; ``None`` is the whole grid, (1, 1).

    Raises ``ValueError`` with a one-line message for anything else (``"3/2"``, ``"0/0"``, ``"a/b"``).
    """
    if shard is None:
        return 1, 1
    if isinstance(shard, str):
        i, sep, n = shard.strip().partition("/")
        if not sep or not i.strip().isdecimal() or not n.strip().isdecimal():
            raise ConfigError(f"shard {shard!r}: write I/N with whole numbers, e.g. 1/4 for the first of 4 shards")
        pair = int(i), int(n)
    else:
        pair = tuple(shard)
        if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
            raise ConfigError(f"shard {shard!r}: give (i, n), two whole numbers, e.g. (1, 4) for the first of 4")
    i, n = pair
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(f"shard {i}/{n}: need 1 <= I <= N (shards are numbered from 1), e.g. 1/{max(n, 2)}")
    return i, n


def shard_folder(out: Path, shard: tuple[int, int]) -> Path:
    """Where shard ``(i, n)`` writes: ``out`` itself for the whole grid, else ``out/shard-i-of-n``."""
    i, n = shard
    return out if n == 1 else out / f"shard-{i}-of-{n}"


def _set_options(method: Method) -> dict[str, Any]:
    """The options of ``method`` that differ from their defaults."""
    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if getattr(method, f.name) != f.default}


def _method(entry: dict) -> Method:
    """A ``[compress] methods`` entry, e.g. ``{"method": "svd", "scheme": "spatial"}``, as a registered method."""
    try:
        return method_from_dict(entry)
    except ValueError as e:
        raise ConfigError(f"[compress] methods entry {entry}: {e}") from None


def resolve_config(name: str | os.PathLike) -> Path:
    """A sweep file path, or the name of a built-in preset (``"demo"``, ``"cifar10-cpu"``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{Path(name).stem}.toml"
    if preset.is_file() and path.suffix in ("", ".toml") and path.parent in (Path("."), Path("configs")):
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
    raise ConfigError(f"sweep config {str(name)!r} not found; give a TOML file or a preset name ({presets})")


_NOT_INHERITED = ("out", "description")
"""Keys a sweep file never takes from the file it extends: each sweep names its own folder and says what it is."""


def read_sweep_file(path: str | os.PathLike, out_given: bool = False) -> dict[str, Any]:
    """The table of a sweep file, with its ``extends`` chain resolved.

    ``extends = NAME`` names a sweep file: a file beside the extending one (``NAME`` or ``NAME.toml``, relative
    to the extending file's folder), else an absolute path, else a built-in preset of that name. The result holds
    that file's tables (its own ``extends`` resolved first), overridden key by key by this file's: a table such as
    ``[train]`` is merged one key at a time, any other value (a list such as ``methods``, a number, a string) is
    replaced whole. ``out`` and ``description`` are taken from this file only. Paths inside the tables (such as
    ``train.data``) stay relative to the current directory, as in any sweep file.

    Parameters
    ----------
    path : path
        The sweep file.
    out_given : bool
        The caller names the output folder (``sweep --out``), so a file that extends another need not.

    Raises
    ------
    ValueError
        A missing or invalid file, an ``extends`` that is not a string or names no file, a loop of ``extends``, or
        a file with ``extends``, no ``out`` of its own and none given; each message names the file.
    """
    path = Path(path)
    raw = read_toml(path)
    return _extend(raw, path.parent, [path], out_given) if "extends" in raw else raw


def _extend(raw: dict[str, Any], folder: Path, chain: list[Path], out_given: bool) -> dict[str, Any]:
    """``raw`` (a sweep table with ``extends``, read from ``folder``; ``chain`` the files read so far, this one
    last) over the table it extends."""
    where = str(chain[-1]) if chain else "sweep config"
    name = raw["extends"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: extends must name a sweep file (a preset name or a path), got {name!r}")
    if "out" not in raw and not out_given and len(chain) <= 1:
        raise ConfigError(
            f"{where}: a sweep file that extends {name!r} must name its own out folder "
            '(e.g. out = "runs/<its name>") or be run with --out, so that the two sweeps never write into one folder'
        )
    parent = _extended_file(name, folder, where)
    if any(parent.resolve() == p.resolve() for p in chain):
        loop = " -> ".join(str(p) for p in [*chain, parent])
        raise ConfigError(f"extends loop: {loop}; a sweep file cannot extend itself, directly or not")
    base = read_toml(parent)
    if "extends" in base:
        base = _extend(base, parent.parent, [*chain, parent], out_given)
    merged = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
    for key, value in raw.items():
        if key == "extends":
            continue
        both_tables = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_tables else value
    return merged


def _extended_file(name: str, folder: Path, where: str) -> Path:
    """The file ``extends = name`` names, from a sweep file in ``folder`` (see :func:`read_sweep_file`)."""
    path = Path(name).expanduser()
    named = [path] if path.suffix or path.is_absolute() else [path, path.with_name(f"{path.name}.toml")]
    beside = [p if p.is_absolute() else folder / p for p in named]
    found = next((p for p in beside if p.is_file()), None)
    if found is not None:
        return found
    preset = PRESETS_DIR / f"{path.stem}.toml"
    if not path.is_absolute() and path.parent == Path(".") and path.suffix in ("", ".toml") and preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
    raise ConfigError(
        f"{where}: extends {name!r}, but there is no file {' or '.join(map(str, beside))} and no preset of that "
        f"name ({presets}); a relative path is read from the extending file's folder"
    )


def _check_owned(
    rows: list[dict], cfg: SweepConfig, runs: tuple[RunSpec, ...], shard: tuple[int, int], path: Path
) -> None:
    """Refuse to resume a shard whose folder holds rows of runs that the grid now deals to another shard."""
    tags = {s.tag(cfg.train) for s in cfg.runs} - {s.tag(cfg.train) for s in runs}
    foreign = sorted({r["run"] for r in rows} & tags)
    if foreign:
        raise ConfigError(
            f"{path} holds rows of {', '.join(foreign)}, which shard {shard[0]}/{shard[1]} of this grid no longer "
            "runs (the grid changed and was dealt anew, or the folder was dealt by tag alone, before runs were dealt "
            "by seed first); sweep into a new out folder"
        )


def _log(msg: str) -> None:
    print(msg, flush=True)


def _dataset_for(config: TrainConfig, cache: dict) -> Dataset:
    """The split a run is evaluated on: the test set, or exactly the validation split its trainer held out."""
    key = (config.dataset, config.data, config.val_fraction, config.val_seed if config.val_fraction else None)
    if key not in cache:
        ds = load_dataset_for(config)
        if config.val_fraction:
            ds = split_validation(ds, config.val_fraction, seed=config.val_seed)
        cache[key] = ds
    return cache[key]


def _spectra_row(base: dict, model: nn.Module, n_layers: int) -> dict:
    """Normalised singular values of a few layers and one weight slice, for the report's plots."""
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.dim() >= 2 and min(m.weight.shape[:2]) >= 8
    ]
    picks = [layers[round(i * (len(layers) - 1) / max(1, n_layers - 1))] for i in range(n_layers)] if layers else []
    spectra = {}
    for name, m in dict(picks).items():
        w = m.weight.detach().double()
        s = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
        spectra[name] = (s / s[0]).tolist()
    row = {**base, "spectra": spectra, "slice_layer": None, "slice_is_conv": False, "slice": None}
    if picks:
        slice_name, layer = picks[len(picks) // 2]
        w = layer.weight.detach().float()
        w2 = w[:, :, w.shape[2] // 2, w.shape[3] // 2] if w.dim() == 4 else w
        row.update(slice_layer=slice_name, slice_is_conv=w.dim() == 4, slice=w2[:64, :64].tolist())
    return row


def _check_calibration(rows: list[dict], requested: int, ds: Dataset, results: Path) -> None:
    """Refuse to add cells to ``rows`` (one run's rows that used calibration data) when they were calibrated on a
    different number of images than ``[compress] calibration_images`` (``requested``) gives on ``ds`` now.

    A row records the images it used (``calibration_images``: ``requested``, or the training split's size when that
    is smaller) and the number requested (``calibration_requested``; absent from older rows).
    """
    from smoothcompress.calibration import describe_source  # as the cells themselves load it

    used = describe_source(ds, requested)["images"]
    for r in rows:
        if r["calibration_images"] != used:
            raise ConfigError(
                f"{results}: run {r['run']}, {r['label']} at rate {r['rate_requested']:g} was calibrated on "
                f"{r['calibration_images']} images; [compress] calibration_images = {requested} now gives {used}. "
                "Set it back, or sweep into a new out folder: a report would pool cells calibrated two ways"
            )


def _trained(spec: RunSpec, tag: str, tconf: TrainConfig, run_dir: Path, commit: str) -> dict:
    """Train the run unless its folder holds a finished model (whose ``config.toml`` the caller has checked).

    Returns the provenance of the training (commit, device, wall time), kept in ``run_dir/provenance.json``.
    """
    stored, prov_path = run_dir / "config.toml", run_dir / "provenance.json"
    if (run_dir / "model.safetensors").exists() and stored.exists():  # its settings are checked by the caller
        _log(f"[{tag}] trained model found, skipping training")
    else:
        _log(f"[{tag}] training ({tconf.epochs} epochs, reg={spec.reg}, weight={spec.weight:g}, seed={spec.seed})")
        train_run(tconf)
    if not prov_path.exists():
        epochs = read_jsonl(run_dir / "metrics.jsonl")  # summed over epochs: a resumed run counts its first part
        info = provenance(tconf.device, commit=commit, train_wall_s=float(sum(r.get("seconds", 0.0) for r in epochs)))
        write_json(prov_path, {k: info[k] for k in ("commit", "device", "time", "train_wall_s")})
    return json.loads(prov_path.read_text())


def sweep(
    config: SweepConfig | str | os.PathLike,
    out: str | os.PathLike | None = None,
    data: str | None = None,
    shard: str | tuple[int, int] | None = None,
) -> Path:
    """Run a sweep, or one shard of it, (resumably) and return the path of the ``results.jsonl`` it wrote.

    Parameters
    ----------
    config : SweepConfig or path
        The parsed config, a TOML path, or a preset name.
    out : path, optional
        Overrides the config's output folder.
    data : str, optional
        Overrides ``train.data``: where the dataset lives (e.g. an ImageFolder ``.tar.gz``).
    shard : "i/n" or (i, n), optional
        Run only the i-th of n disjoint slices of the training runs (numbered from 1; see the module
        docstring), into ``out/shard-i-of-n/``. Default: the whole grid, into ``out``.
    """
    cfg = config if isinstance(config, SweepConfig) else SweepConfig.from_toml(config, out=out)
    cfg = replace(
        cfg,
        out=Path(out) if out is not None else cfg.out,
        train={**cfg.train, "data": data} if data is not None else cfg.train,
    )
    shard = parse_shard(shard)
    runs = cfg.shard_runs(shard)
    folder = shard_folder(cfg.out, shard)
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder, user="sweep"):  # two sweeps into one folder would train the same runs twice
        return _sweep(cfg, runs, folder, shard)


def _keep_table(cfg: SweepConfig, folder: Path) -> None:
    """Write ``folder/sweep.toml``: the table ``cfg`` was parsed from, with its ``out`` and ``train`` as run (values
    TOML cannot hold, ``None``, left out). Nothing is written, with a warning, when the table no longer parses to
    ``cfg`` (a config changed after parsing) or ``cfg`` was built without one."""
    if cfg.table is None:
        return
    table = _toml_values({**cfg.table, "out": str(cfg.out), "train": cfg.train})
    if SweepConfig.from_dict(table).fingerprint() != cfg.fingerprint():
        warnings.warn(f"{folder / 'sweep.toml'} not written: the config was changed after it was parsed", stacklevel=3)
        return
    write_toml(
        folder / "sweep.toml", table, f"the sweep this folder holds, as last run; fingerprint {cfg.fingerprint()}"
    )


def _toml_values(value: Any) -> Any:
    """``value`` with what TOML holds: ``None`` entries dropped, paths as text, tuples as lists, at every depth."""
    if isinstance(value, dict):
        return {k: _toml_values(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_values(v) for v in value]
    return str(value) if isinstance(value, os.PathLike) else value


def _check_resumable(
    cfg: SweepConfig,
    configs: dict[RunSpec, TrainConfig],
    rows: list[dict],
    shard: tuple[int, int],
    results: Path,
    datasets: dict,
) -> None:
    """Every refusal of a sweep, before anything is written or trained: rows of runs another shard now owns, run
    folders trained with other settings (``configs``: each run's training config), and rows calibrated on a request
    other than today's whose image count differs. ``datasets`` caches the splits loaded for the last check."""
    _check_owned(rows, cfg, tuple(configs), shard, results)
    for spec, tconf in configs.items():
        saved = Path(tconf.out) / "config.toml"
        if saved.exists():  # rows of other settings never count
            check_same_settings(TrainConfig.from_toml(saved).to_dict(), tconf, saved)
        unsure = [  # rows calibrated on a request other than today's: the count they used tells
            r
            for r in rows
            if r["run"] == spec.tag(cfg.train)
            and "calibration_images" in r
            and r.get("calibration_requested") != cfg.calibration_images
        ]
        if unsure:
            _check_calibration(unsure, cfg.calibration_images, _dataset_for(tconf, datasets), results)


def _sweep(cfg: SweepConfig, runs: tuple[RunSpec, ...], folder: Path, shard: tuple[int, int]) -> Path:
    """The body of :func:`sweep`: ``runs`` (shard ``shard`` of the grid) into ``folder``, holding its lock."""
    results, spectra_path = folder / "results.jsonl", folder / "spectra.jsonl"
    rows = read_jsonl(results)
    datasets: dict = {}
    configs = {
        spec: TrainConfig.from_dict(
            {**cfg.train, **spec.train_overrides(), "out": str(folder / "runs" / spec.tag(cfg.train)), "resume": True}
        )
        for spec in runs
    }
    _check_resumable(cfg, configs, rows, shard, results, datasets)
    _keep_table(cfg, folder)
    done = {cell_key(r) for r in rows}
    spectra_done = {r["run"] for r in read_jsonl(spectra_path)}
    cells = [(None, 0.0), *itertools.product(cfg.methods, cfg.rates)]
    where = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    _log(f"sweep: {where}{len(runs)} training runs, {len(runs) * len(cells)} cells, {len(done)} done -> {results}")
    stamp = {"shard": shard[0], "shards": shard[1], "sweep_fingerprint": cfg.fingerprint()}
    commit = git_commit()  # the code this process loaded, even if the tree changes while it runs
    for spec in runs:
        tag = spec.tag(cfg.train)
        run_dir = folder / "runs" / tag
        tconf = configs[spec]
        if all((tag, m.label if m else "dense", r) in done for m, r in cells) and tag in spectra_done:
            continue
        trained = _trained(spec, tag, tconf, run_dir, commit)
        device = resolve_device(tconf.device)
        model = io.load(run_dir / "model.safetensors").eval()
        ds = _dataset_for(tconf, datasets)
        input_shape = (1, *ds.input_shape)
        base = {
            "run": tag,
            "model": tconf.model,
            "width": model.sc_arch["kwargs"].get("width") if hasattr(model, "sc_arch") else tconf.width,
            "variant": spec.variant_name(),
            "dataset": ds.name,
            "dataset_sha256": ds.sha256,
            "split": "val" if tconf.val_fraction else "test",
            "reg": spec.reg,
            "weight": spec.weight,
            "seed": spec.seed,
            "epochs": tconf.epochs,
            **stamp,
        }
        if tag not in spectra_done:
            append_jsonl(spectra_path, _spectra_row(base, model, cfg.spectra_layers))
        base |= {
            "params_dense": count_params(model),
            "flops_dense": count_flops(model, input_shape),
            "train_commit": trained["commit"],
            "train_device": trained["device"],
            "train_wall_s": trained["train_wall_s"],
        }
        where = provenance(device, commit=commit)  # once per run, not per row
        dense_acc = evaluate(model, ds, device=device)
        calibration = None  # input moments of this run's model: computed once, for every data-aware cell
        for method, rate in cells:
            name, label = (method.name, method.label) if method else ("dense", "dense")
            options = method.options() if method else {}
            row = {
                **base,
                "method": name,
                "label": label,
                **{key: options.get(key) for key in ROW_OPTIONS},
                "rate_requested": rate,
                "dense_accuracy": dense_acc,
            }
            if cell_key(row) in done:
                continue
            t0 = time.perf_counter()
            uses_data = bool(method and method.uses_data())
            if uses_data:  # training split only (a validation split is carved out of it), forward passes only
                from smoothcompress.calibration import calibrate, describe_source

                source = describe_source(ds, cfg.calibration_images)
                images = source["images"]
                row |= {
                    "calibration_images": images,
                    "calibration_requested": cfg.calibration_images,
                    "calibration_split": source["split"],
                }
                if method.data_aware and calibration is None:
                    calibration = calibrate(model, ds, images)
                    row["calibration_s"] = calibration.seconds
            try:
                if method is None:
                    small = model
                elif uses_data:
                    small = method.apply(model, rate, data=ds, images=images, calibration=calibration)
                else:
                    small = method.apply(model, rate)
            except RateUnreachable as e:  # a rate out of reach is a result too: record it, go on
                row.update(error=str(e), accuracy=None)
            else:
                nonzero = bool(method and method.nonzero)
                params = count_params(small, nonzero=nonzero)
                row.update(
                    accuracy=dense_acc if method is None else evaluate(small, ds, device=device),
                    params=params,
                    params_nonzero=nonzero,
                    rate_achieved=1 - params / base["params_dense"],
                    flops=count_flops(small, input_shape),
                )
            row |= {
                **where,
                "seed": spec.seed,
                "wall_s": time.perf_counter() - t0,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            append_jsonl(results, row)
            done.add(cell_key(row))
            acc = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "out of reach"
            _log(f"[{tag}] {label:<22} rate {rate:.2f}: acc {acc}")
    return results
