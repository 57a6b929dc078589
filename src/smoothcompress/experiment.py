"""Sweeps: train a grid of models, compress each by every method at every rate, write one results row per cell.

A sweep is described by a TOML file (see ``configs/``)::

    out = "runs/demo"                      # everything the sweep writes goes here
    [train]                                # TrainConfig fields shared by every run
    dataset = "digits"
    model = "mlp"
    epochs = 30
    [grid]
    seeds = [0]                            # default seeds of every regularizer entry
    regularizers = [                       # kind x lam x seed; lam may be a list
        { kind = "none", lam = 0.0, seeds = [0, 1] },
        { kind = "nuclear", lam = [1e-3, 1e-2] },
    ]
    variants = [{ width = 16 }, { width = 32 }]   # optional: other models or widths
    [compress]
    rates = [0.3, 0.5, 0.7, 0.9]
    methods = [{ method = "svd", allocation = "global", scheme = "channel" }, { method = "magnitude" }]

Layout of ``out``: ``runs/<tag>/`` holds each training run (model, metrics, checkpoint), ``results.jsonl`` one row
per (run, method, rate), ``spectra.jsonl`` one row per run with singular-value spectra and a weight slice for the
report. Every row carries its provenance (commit, device, dataset name and sha256, seed, wall time).

The sweep is resumable at two levels: an interrupted training run resumes from its last checkpoint, and finished
cells (rows already in ``results.jsonl``) are skipped.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from smoothcompress import io
from smoothcompress.accounting import count_flops, count_params
from smoothcompress.data import Dataset, split_validation
from smoothcompress.lowrank import compress
from smoothcompress.provenance import append_jsonl, provenance, read_jsonl
from smoothcompress.prune import prune
from smoothcompress.train import TrainConfig, evaluate, load_dataset_for, read_toml
from smoothcompress.train import run as train_run

__all__ = ["MethodSpec", "RunSpec", "SweepConfig", "sweep", "PRESETS_DIR", "resolve_config"]

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
"""Built-in sweep presets (``demo``, ``cifar10-cpu``, ...); ``configs/`` in the repository points here."""

METHODS = ("svd", "magnitude", "magnitude-layerwise", "filter")


@dataclass(frozen=True)
class MethodSpec:
    """One compression method of a sweep: ``svd`` (with allocation and scheme) or a pruning method."""

    method: str
    allocation: str = "global"  # svd only
    scheme: str = "channel"  # svd only

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")

    @property
    def label(self) -> str:
        return f"svd-{self.allocation}-{self.scheme}" if self.method == "svd" else self.method


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid: shared settings plus its regulariser, weight, seed and variant."""

    reg: str
    lam: float
    seed: int
    variant: tuple = ()  # sorted (key, value) pairs overriding [train], e.g. (("width", 16),)

    def train_overrides(self) -> dict:
        return {**dict(self.variant), "reg": self.reg, "lam": float(self.lam), "seed": int(self.seed)}

    def tag(self, train: dict) -> str:
        v = {**train, **dict(self.variant)}
        parts = [str(v.get("model", "model"))]
        if "width" in v:
            parts.append(f"w{v['width']}")
        parts += [f"{k}{val}" for k, val in self.variant if k not in ("model", "width")]
        parts += [self.reg if self.reg == "none" else f"{self.reg}{self.lam:g}", f"s{self.seed}"]
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))


@dataclass
class SweepConfig:
    """A parsed sweep file. Build it with :meth:`from_toml` or :meth:`from_dict`."""

    out: Path
    train: dict
    runs: list[RunSpec]
    rates: list[float]
    methods: list[MethodSpec]
    spectra_layers: int = 3
    source: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, out: str | os.PathLike | None = None) -> SweepConfig:
        path = resolve_config(path)
        cfg = cls.from_dict(read_toml(path), out=out)
        cfg.source = str(path)
        return cfg

    @classmethod
    def from_dict(cls, raw: dict, out: str | os.PathLike | None = None) -> SweepConfig:
        unknown = set(raw) - {"out", "train", "grid", "compress", "report", "description"}
        if unknown:
            raise ValueError(f"unknown sweep sections {sorted(unknown)}; expected out, train, grid, compress, report")
        train = dict(raw.get("train", {}))
        TrainConfig.from_dict(train)  # validate field names early, before anything runs
        grid = raw.get("grid", {})
        default_seeds = list(grid.get("seeds", [0]))
        variants = [tuple(sorted(v.items())) for v in grid.get("variants", [{}])]
        runs: list[RunSpec] = []
        for entry in grid.get("regularizers", [{"kind": "none", "lam": 0.0}]):
            kind = entry.get("kind")
            if kind is None:
                raise ValueError(f"regularizer entry {entry} has no 'kind'")
            lams = entry.get("lam", 0.0)
            lams = lams if isinstance(lams, list) else [lams]
            for variant, lam, seed in itertools.product(variants, lams, entry.get("seeds", default_seeds)):
                runs.append(RunSpec(kind, float(lam), int(seed), variant))
        comp = raw.get("compress", {})
        rates = [float(r) for r in comp.get("rates", [0.5, 0.7, 0.9])]
        if any(not 0 < r < 1 for r in rates):
            raise ValueError(f"compress.rates must lie in (0, 1), got {rates}")
        methods = [MethodSpec(**m) for m in comp.get("methods", [{"method": "svd"}])]
        return cls(
            out=Path(out or raw.get("out", "runs/sweep")),
            train=train,
            runs=list(dict.fromkeys(runs)),
            rates=rates,
            methods=methods,
            spectra_layers=int(raw.get("report", {}).get("spectra_layers", 3)),
        )


def resolve_config(name: str | os.PathLike) -> Path:
    """A sweep file path, or the name of a built-in preset (``"demo"``, ``"cifar10-cpu"``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{Path(name).stem}.toml"
    if preset.is_file() and path.suffix in ("", ".toml") and path.parent in (Path("."), Path("configs")):
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
    raise ValueError(f"sweep config {str(name)!r} not found; give a TOML file or a preset name ({presets})")


def _cell_key(row: dict) -> tuple:
    return (row["run"], row["label"], float(row["rate_requested"]))


def _log(msg: str) -> None:
    print(msg, flush=True)


def _dataset_for(config: TrainConfig, cache: dict) -> Dataset:
    key = (config.dataset, config.data, config.val_fraction, config.val_seed if config.val_fraction else None)
    if key not in cache:
        ds = load_dataset_for(config)
        if config.val_fraction:  # evaluate on exactly the validation split the trainer held out
            ds = split_validation(ds, config.val_fraction, seed=config.val_seed)
        cache[key] = ds
    return cache[key]


def _spectra_row(tag: str, spec: RunSpec, model: nn.Module, n_layers: int) -> dict:
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
    slice_name, weight_slice = None, None
    if picks:
        slice_name, m = picks[len(picks) // 2]
        w = m.weight.detach().float()
        w2 = w[:, :, w.shape[2] // 2, w.shape[3] // 2] if w.dim() == 4 else w
        weight_slice = w2[:64, :64].tolist()
    return {
        "run": tag,
        "reg": spec.reg,
        "lam": spec.lam,
        "seed": spec.seed,
        "spectra": spectra,
        "slice_layer": slice_name,
        "slice_is_conv": bool(picks) and isinstance(m, nn.Conv2d),
        "slice": weight_slice,
    }


def _compressed(model: nn.Module, method: MethodSpec, rate: float) -> nn.Module:
    if method.method == "svd":
        return compress(model, rate=rate, allocation=method.allocation, scheme=method.scheme)
    return prune(model, rate=rate, method=method.method)


def iter_cells(cfg: SweepConfig) -> Iterator[tuple[RunSpec, MethodSpec | None, float]]:
    """Every (run, method, rate) cell; method ``None`` with rate 0 is the dense model itself."""
    for spec in cfg.runs:
        yield spec, None, 0.0
        for method, rate in itertools.product(cfg.methods, cfg.rates):
            yield spec, method, rate


def sweep(
    config: SweepConfig | str | os.PathLike, out: str | os.PathLike | None = None, data: str | None = None
) -> Path:
    """Run a sweep (resumably) and return the path of its ``results.jsonl``.

    Parameters
    ----------
    config : SweepConfig or path
        The parsed config, a TOML path, or a preset name.
    out : path, optional
        Overrides the config's output folder.
    data : str, optional
        Overrides ``train.data``: where the dataset lives (e.g. an ImageFolder ``.tar.gz``).
    """
    cfg = config if isinstance(config, SweepConfig) else SweepConfig.from_toml(config, out=out)
    if out is not None:
        cfg.out = Path(out)
    if data is not None:
        cfg.train["data"] = data
    cfg.out.mkdir(parents=True, exist_ok=True)
    results, spectra_path = cfg.out / "results.jsonl", cfg.out / "spectra.jsonl"
    done = {_cell_key(r) for r in read_jsonl(results)}
    spectra_done = {r["run"] for r in read_jsonl(spectra_path)}
    datasets: dict = {}
    n_cells = len(cfg.runs) * (1 + len(cfg.methods) * len(cfg.rates))
    _log(f"sweep: {len(cfg.runs)} training runs, {n_cells} cells, {len(done)} already done -> {results}")

    for spec in cfg.runs:
        tag = spec.tag(cfg.train)
        cells = [(m, r) for s, m, r in iter_cells(cfg) if s == spec]
        if all((tag, m.label if m else "dense", r) in done for m, r in cells) and tag in spectra_done:
            continue
        run_dir = cfg.out / "runs" / tag
        tconf = TrainConfig.from_dict({**cfg.train, **spec.train_overrides(), "out": str(run_dir), "resume": True})
        if (run_dir / "model.safetensors").exists():
            _log(f"[{tag}] trained model found, skipping training")
        else:
            _log(f"[{tag}] training ({tconf.epochs} epochs, reg={spec.reg}, lam={spec.lam:g}, seed={spec.seed})")
            train_run(tconf)
        train_wall = _train_wall(run_dir)  # summed over epochs, so a resumed run counts its earlier part too
        model = io.load(run_dir / "model.safetensors").eval()
        ds = _dataset_for(tconf, datasets)
        if tag not in spectra_done:
            append_jsonl(spectra_path, _spectra_row(tag, spec, model, cfg.spectra_layers))
        input_shape = (1, *ds.input_shape)
        base = {
            "run": tag,
            "model": tconf.model,
            "width": tconf.width,
            "dataset": ds.name,
            "dataset_sha256": ds.sha256,
            "split": "val" if tconf.val_fraction else "test",
            "reg": spec.reg,
            "lam": spec.lam,
            "seed": spec.seed,
            "epochs": tconf.epochs,
            "params_dense": count_params(model),
            "flops_dense": count_flops(model, input_shape),
            "train_wall_s": train_wall,
        }
        dense_acc = evaluate(model, ds, device=tconf.device)
        for method, rate in cells:
            t0 = time.perf_counter()
            name = method.method if method else "dense"
            row = {
                **base,
                "method": name,
                "label": method.label if method else "dense",
                "allocation": method.allocation if method and method.method == "svd" else None,
                "scheme": method.scheme if method and method.method == "svd" else None,
                "rate_requested": rate,
            }
            if _cell_key(row) in done:
                continue
            try:
                small = model if method is None else _compressed(model, method, rate)
            except ValueError as e:  # an unreachable rate is a result too: record it, do not stop the sweep
                row.update(error=str(e), accuracy=None, dense_accuracy=dense_acc)
            else:
                nonzero = name.startswith("magnitude")
                params = count_params(small, nonzero=nonzero)
                acc = dense_acc if method is None else evaluate(small, ds, device=tconf.device)
                row.update(
                    accuracy=acc,
                    dense_accuracy=dense_acc,
                    params=params,
                    params_nonzero=nonzero,
                    rate_achieved=1 - params / base["params_dense"],
                    flops=count_flops(small, input_shape),
                )
            row.update(provenance(tconf.device, seed=spec.seed, wall_s=time.perf_counter() - t0))
            append_jsonl(results, row)
            done.add(_cell_key(row))
            acc_txt = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "n/a (" + row["error"] + ")"
            _log(f"[{tag}] {row['label']:<22} rate {rate:.2f}: acc {acc_txt}")
    return results


def _train_wall(run_dir: Path) -> float | None:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return float(sum(r.get("seconds", 0.0) for r in rows)) if rows else None
