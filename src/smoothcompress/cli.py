"""Command-line interface: ``smoothcompress {train,compress,prune,evaluate,export,sweep,report,demo}``.

It only parses arguments and calls the public Python API; every command has a one-call equivalent in Python.
``compress`` and ``prune`` dispatch through the method registry (:mod:`smoothcompress.methods`): ``--method``
takes any registered method of the command's family, and every option a method declares is a flag.
User errors print one line, ``smoothcompress COMMAND: error: ...``, and exit with status 2: the project's errors
(:class:`~smoothcompress.errors.SmoothcompressError`: bad arguments, missing or corrupt data and files, impossible
rates, diverged training), argument-parsing errors, and a file named on the command line that cannot be opened
(:data:`USER_OS_ERRORS`). Any other exception is a bug and keeps its traceback; set
``SMOOTHCOMPRESS_DEBUG=1`` for the traceback of a user error as well. Library warnings print as one line,
``smoothcompress COMMAND: warning: ...``, in the command line's terms (``--calibrate 128``, not ``images >= 128``).

The library only logs (``logging``, logger ``smoothcompress``); the command line decides what is shown. Commands
that train (``train``, ``sweep``, ``demo``) print the trainer's line per epoch on stdout when stdout is not a
terminal (a log file, a pipe, a batch job), where the progress bar, which needs a terminal, shows nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import smoothcompress as sc
from smoothcompress import models
from smoothcompress.errors import ConfigError, SmoothcompressError
from smoothcompress.inputs import CALIBRATION_IMAGES, as_example  # CALIBRATION_IMAGES: default --calibrate
from smoothcompress.methods import get_method, list_methods
from smoothcompress.record import compression_record
from smoothcompress.selection import ENTRY_HELP
from smoothcompress.study.data import OFFICIAL
from smoothcompress.study.training import DEVICES, REG_KINDS, TrainConfig, evaluate, load_dataset_for, run

__all__ = ["main", "build_parser", "user_error", "cli_terms", "ParseError", "USER_OS_ERRORS"]

USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
"""Errors of opening a file the user named (or of an output folder another process holds): one line, status 2."""

CLI_TERMS = (
    (re.compile(r"([Pp])ass images >= (\d+)"), r"\1ass --calibrate \2"),  # and "pass images >= 2" in errors
    (re.compile(r"\b(allocation|scheme)='([\w-]+)'"), r"--\1 \2"),
    (re.compile(r"the requested (\d)"), r"the requested --rate \1"),
    (re.compile(r"the budget (\d)"), r"the --flops budget \1"),
)
"""Library warnings and errors rewritten in the terms of the commands that have these flags (:data:`FLAG_COMMANDS`):
(pattern, replacement). Other commands (a sweep's ``[compress]`` table, say) keep the library's terms."""

FLAG_COMMANDS = ("compress", "prune")

TRAINING_COMMANDS = ("train", "sweep", "demo")  # they run the trainer, whose epoch lines are log records


# ------------------------------------------------------------------------------------------------------------
# Commands: each turns parsed arguments into one API call and prints its result.


def cmd_train(args: argparse.Namespace) -> int:
    _check_data_flags(args.dataset, args.data)
    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS}
    overrides["resume"] = args.resume or None
    speaks = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 speaks
    config = TrainConfig.from_sources(args.config, **overrides)
    result = run(config)
    if speaks:
        split, acc = ("validation", result.val_acc) if result.val_acc is not None else ("test", result.test_acc)
        print(f"{split} accuracy {100 * acc:.2f}% after {len(result.history)} epochs; run folder {result.out_dir}")
    return 0


def _check_data_flags(dataset: str | None, data: str | None) -> None:
    """Refuse a ``--dataset`` and a ``--data`` that cannot name the same data (one would be silently ignored):
    ``--dataset`` may only say which official dataset lives at ``--data``."""
    if dataset is None or data is None or dataset.strip().lower() in OFFICIAL:
        return
    if dataset.strip().lower() == "digits":
        raise ConfigError(f"--dataset digits is bundled and reads no files, but --data {data} was given; drop one")
    raise ConfigError(
        f"--dataset {dataset} and --data {data} both name the data; give it once (--data PATH, with at most "
        f"--dataset {' or '.join(OFFICIAL)} to say which official dataset lives there)"
    )


def _dataset(args: argparse.Namespace):
    if args.dataset is None and args.data is None:
        return None
    _check_data_flags(args.dataset, args.data)
    return load_dataset_for(TrainConfig(dataset=args.dataset or "cifar10", data=args.data))


def _compare(args: argparse.Namespace, model, small, rep, ds) -> None:
    """Print the per-layer table, totals and, when data is given, the accuracy before and after."""
    print(rep)
    if ds is not None:
        before = evaluate(model, ds, device=args.device)
        after = evaluate(small, ds, device=args.device)
        print(f"test accuracy on {ds.name}: {100 * before:.2f}% -> {100 * after:.2f}% (no fine-tuning)")
    if args.output:
        print(f"saved {sc.save(small, args.output)}")
    else:
        print("nothing saved: pass -o FILE.safetensors to write the result")


def _method(args: argparse.Namespace):
    """The ``--method`` with the option flags given on the command line (a flag it does not declare is an error)."""
    declared = {f.name for f in get_method(args.method).option_fields()}
    options = {}
    for name in args.option_names:
        value = getattr(args, OPTION_DEST + name)
        if value is None:
            continue
        if name not in declared:
            raise ConfigError(f"--{name.replace('_', '-')} is not an option of method {args.method!r}")
        options[name] = value
    return get_method(args.method, **options)


def _load(args: argparse.Namespace):
    """The model file ``args.model``, rebuilt by the registry or by ``--model-factory MODULE:FUNCTION``."""
    skeleton = models.import_factory(args.model_factory)() if args.model_factory else None
    return sc.load(args.model, model=skeleton)


def _check_dense(path: str, model) -> None:
    """Refuse to compress or prune a model that already was (its rate would be counted from the smaller model)."""
    record = compression_record(model)
    if record is None:
        return
    rate = record.rate_achieved if record.rate_achieved is not None else record.rate_requested
    removed = f", {100 * rate:.0f}% removed" if rate is not None else ""
    raise ConfigError(f"{path} is already compressed ({record.label}{removed}); compress the dense model")


def _check_output(args: argparse.Namespace) -> None:
    """Refuse an ``-o`` that would write a safetensors file under another suffix, or over the input model."""
    if not args.output:
        return
    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        export = " (for ONNX: smoothcompress export)" if out.suffix == ".onnx" else ""
        raise ConfigError(f"-o writes a safetensors file: name it *.safetensors, not {out.name!r}{export}")
    if out.exists() and out.resolve() == Path(args.model).resolve():
        raise ConfigError(f"-o {args.output} is the input model: write the result to another file")


def cmd_compress(args: argparse.Namespace) -> int:
    """``compress`` and ``prune``: apply the chosen method, print its per-layer table, evaluate, save."""
    _check_output(args)
    model = _load(args)
    _check_dense(args.model, model)
    method = _method(args)
    extra = {}
    ranks = _once_each(
        [_parse_rank(r) for r in getattr(args, "rank", [])],
        "--rank names layer(s) {} more than once; give each layer one rank",
    )
    if ranks:
        if "ranks" not in inspect.signature(method.apply).parameters:
            raise ConfigError(f"--rank does not apply to method {method.name!r}")
        extra["ranks"] = ranks
    flops = getattr(args, "flops", None)
    if flops is not None:
        if "flops" not in inspect.signature(method.apply).parameters:
            raise ConfigError(f"--flops does not apply to method {method.name!r}")
        extra |= {"flops": flops, "input_shape": models.default_input_shape(model)}
    latency = getattr(args, "latency", None)
    if latency is not None:
        if "latency" not in inspect.signature(method.apply).parameters:
            raise ConfigError(f"--latency does not apply to method {method.name!r}")
        shape = tuple(args.input_shape) if args.input_shape else models.default_input_shape(model)
        if shape is None:
            raise ConfigError("--latency needs the input to time: pass --input-shape with the batch, e.g. 128 3 32 32")
        extra |= {"latency": latency, "runtime": args.runtime or "eager", "input_shape": shape}
    elif getattr(args, "runtime", None) is not None:
        raise ConfigError("--runtime says where --latency is measured; pass --latency F too")
    elif getattr(args, "input_shape", None) and flops is not None:
        extra["input_shape"] = tuple(args.input_shape)
    rate = args.rate if args.rate is not None or ranks or flops is not None or latency is not None else 0.7
    ds = _dataset(args)
    if args.calibrate is not None and args.calibrate < 1:
        raise ConfigError(f"--calibrate takes a number of images, at least 1; got {args.calibrate}")
    if args.calibrate is not None and not method.uses_data():
        data_methods = [n for n in list_methods(method.family) if get_method(n).uses_data()]
        raise ConfigError(
            f"--calibrate applies to the methods that use data ({', '.join(data_methods)}), not {method.name!r}"
        )
    if method.uses_data():  # training images only, forward passes only
        if ds is None:
            raise ConfigError(
                f"method {method.name!r} needs calibration data (training images, forward passes only): pass "
                "--dataset NAME and/or --data PATH"
            )
        extra |= {"data": ds, "images": args.calibrate if args.calibrate is not None else CALIBRATION_IMAGES}
    small = method.apply(model, rate, exclude=args.exclude, **extra)
    _compare(args, model, small, method.report(model, small, models.default_input_shape(model)), ds)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    onnx = Path(args.model).suffix == ".onnx"
    if onnx and args.model_factory:
        raise ConfigError("--model-factory applies to .safetensors files; an .onnx file holds its graph")
    model = sc.OnnxModel(args.model) if onnx else _load(args)
    ds = _dataset(args)
    if ds is None:
        raise ConfigError("evaluate needs data: pass --dataset NAME and/or --data PATH")
    if onnx:  # onnxruntime on the CPU
        acc = evaluate(model, ds)
        q = model.quantization
        what = f"int8 {q['mode']}, {q['calibration_images']} calibration images" if q else "float"
        print(f"{args.model}: {100 * acc:.2f}% test accuracy on {ds.name} (onnxruntime, {what})")
        return 0
    acc = evaluate(model, ds, device=args.device)
    record = compression_record(model)  # an unstructured-pruned model's size is its non-zero count
    params = f"{sc.count_params(model):,} params"
    params += f", {sc.count_params(model, nonzero=True):,} non-zero" if record is not None and record.nonzero else ""
    print(f"{args.model}: {100 * acc:.2f}% test accuracy on {ds.name} ({params})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model = _load(args)
    if args.input_shape:
        shape = tuple(args.input_shape)
    else:
        try:  # the one decision of what a model takes (smoothcompress.inputs), in the command line's terms
            shape = as_example(model).shape
        except ConfigError:
            raise ConfigError("cannot tell this model's input shape: pass --input-shape, e.g. 1 3 32 32") from None
    print(f"wrote {sc.export_onnx(model, args.output, shape)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from smoothcompress.study.experiment import parse_shard, sweep

    if args.plan:
        return _plan(args)
    if args.shard and args.shard.strip().lower().startswith("all"):
        raise ConfigError(f"--shard {args.shard} lists every shard with --plan; to run, give one shard, e.g. 1/2")
    i, n = parse_shard(args.shard)
    results = sweep(args.config, out=args.out, data=args.data, shard=(i, n))
    if n == 1:
        print(f"results: {results}\nnext: smoothcompress report {results} -o {results.parent / 'report'}")
    else:  # the shard's folder is out/shard-i-of-n: the report reads out, all shards merged
        folder = results.parent.parent
        print(f"results of shard {i}/{n}: {results}")
        print(f"next, once all {n} shards are done: smoothcompress report {folder}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    """``sweep --plan``: the merged settings, the grid's size and each run's shard and progress; runs nothing."""
    from smoothcompress.study.experiment import SweepConfig
    from smoothcompress.study.plan import plan_table, sweep_plan

    cfg = SweepConfig.from_toml(args.config, out=args.out)
    plan = sweep_plan(cfg, shard=args.shard)
    cells = 1 + len(cfg.methods) * len(cfg.rates)
    train = {**cfg.train, **({"data": args.data} if args.data else {})}
    grid = f"{_count(len(cfg.methods), 'method')} x {_count(len(cfg.rates), 'rate')}"
    print(f"sweep {args.config}: {_count(len(cfg.runs), 'training run')} x {_count(cells, 'cell')} (dense, and "
          f"{grid}), fingerprint {cfg.fingerprint()}")  # fmt: skip
    print("train (before each run's own settings): " + ", ".join(f"{k} {v}" for k, v in train.items()))
    print(f"rates: {', '.join(f'{r:g}' for r in cfg.rates)}; methods: {', '.join(m.label for m in cfg.methods) or '—'}")
    print(f"out: {cfg.out}{'' if cfg.out.exists() else ' (does not exist yet)'}\n\n{plan_table(plan)}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _report(
    results: Path, out: Path, reference: list[Path] | None = None, floors: dict[float, float] | None = None
) -> int:
    from smoothcompress.study.report import write_report

    path = write_report(results, out, reference, floors)
    print((path.parent / "summary.md").read_text())
    print(f"report: {path}\nplots:  {', '.join(str(p) for p in sorted(path.parent.glob('*.png')))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.results]
    folders = [(p if p.is_dir() else p.parent).resolve() for p in paths]
    out = Path(args.output) if args.output else Path(os.path.commonpath(folders)) / "report"
    with warnings.catch_warnings(record=True) as caught:  # a missing shard: said once, on stderr, in one line
        warnings.simplefilter("always", UserWarning)
        references = [Path(r) for r in args.reference] if args.reference else None
        floors = _once_each(
            [_parse_floor(f) for f in args.floor or []], "--floor gives one rate twice; give each rate one accuracy"
        )
        code = _report(paths[0] if len(paths) == 1 else paths, out, references, floors)
    for w in caught:
        print(f"smoothcompress report: warning: {w.message}", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from smoothcompress.study.experiment import sweep

    results = sweep("demo", out=args.out)
    return _report(results, results.parent / "report")


# ------------------------------------------------------------------------------------------------------------
# Parsing

TRAIN_FLAGS = (
    "dataset", "data", "model", "width", "epochs", "batch_size", "lr", "reg", "weight", "seed", "device", "out"
)  # fmt: skip


VALUE_METAVARS = {int: "N", float: "X", str: "VALUE"}  # method options without choices
MODEL_FACTORY_HELP = (
    "build the architecture with FUNCTION() from MODULE (e.g. mypkg.nets:build), for a model file whose "
    "model is not in the registry; the file's weights and recorded layers are loaded into it"
)

OPTION_DEST = "option_"  # method options are parsed into args.option_<name>


def _add_method_args(p: argparse.ArgumentParser, family: str, default: str) -> None:
    """``--method`` over the registered methods of ``family``, and one flag per option any of them declares."""
    names = list_methods(family)
    p.add_argument("--method", default=default, choices=names, help=f"default {default}")
    options: dict[str, str] = {}
    for name in names:
        for f in get_method(name).option_fields():
            if f.name in options:
                continue
            options[f.name] = name
            flag, doc = "--" + f.name.replace("_", "-"), help_text(f.metadata["doc"])
            if type(f.default) is bool:
                p.add_argument(flag, dest=OPTION_DEST + f.name, action="store_true", default=None, help=doc)
            else:
                p.add_argument(flag, dest=OPTION_DEST + f.name, type=type(f.default), choices=f.metadata["choices"],
                               metavar=None if f.metadata["choices"] else VALUE_METAVARS.get(type(f.default), "VALUE"),
                               default=None, help=f"{doc} (default {f.default})")  # fmt: skip
    p.set_defaults(option_names=tuple(options))


def help_text(doc: str) -> str:
    """A method option's doc as command-line help: without the references to source files and modules of the
    project's repository (``(see lowrank)``, ``benchmarks/results/....json``), which a user of the command has not."""
    doc = re.sub(r"\s*\(see \w+\)", "", doc)
    doc = re.sub(r"\s*\([\w/.-]+\.(?:json|md|py|toml)\)", "", doc)
    doc = re.sub(r":\s*[\w/.-]+\.(?:json|md|py|toml)", "", doc)
    return doc


def _parse_rank(text: str) -> tuple[str, int]:
    name, sep, rank = text.rpartition("=")
    if not sep or not name or not rank.isdigit():
        raise ConfigError(f"--rank takes LAYER=RANK, e.g. layers.0.0.conv1=8; got {text!r}")
    return name, int(rank)


def _once_each(pairs: list[tuple], message: str) -> dict:
    """``dict(pairs)``, or a ConfigError ``message`` (its ``{}``, if any, filled with the keys given twice)."""
    given = dict(pairs)
    if len(given) < len(pairs):
        keys = [k for k, _ in pairs]
        raise ConfigError(message.format(", ".join(sorted({str(k) for k in keys if keys.count(k) > 1}))))
    return given


def _parse_floor(text: str) -> tuple[float, float]:
    """``--floor RATE:ACC`` in percent, e.g. ``70:91``, as fractions ``(0.7, 0.91)``."""
    rate, sep, acc = text.partition(":")
    try:
        pair = (round(float(rate) / 100, 9), round(float(acc) / 100, 9)) if sep else None  # 0.333, not 0.33299..
    except ValueError:
        pair = None
    if pair is None or not all(0.01 < x < 1 for x in pair):  # 1% or less: a fraction given where percent is read
        raise ConfigError(
            f"--floor takes RATE:ACCURACY in percent, both above 1 and below 100, e.g. 70:91 (91% accuracy at 70% "
            f"fewer parameters); got {text!r}"
        )
    return pair


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", metavar="NAME", help="cifar10, cifar100 or digits; with --data: the dataset that lives there"
    )
    p.add_argument(
        "--data", metavar="PATH", help="an ImageFolder .tar.gz or directory, or the folder holding the official files"
    )
    p.add_argument("--device", metavar="DEVICE", default="auto", help="cpu, cuda or auto (default)")


def _add_model_args(p: argparse.ArgumentParser, onnx: bool = False) -> None:
    what = "(.safetensors, or .onnx run by onnxruntime)" if onnx else "(.safetensors)"
    p.add_argument("model", metavar="MODEL", help=f"a model file written by smoothcompress {what}")
    p.add_argument("--model-factory", metavar="MODULE:FUNCTION", help=MODEL_FACTORY_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smoothcompress",
        description="Smooth training and SVD compression of neural networks without fine-tuning "
        "(Runkel et al., arXiv 2505.24469).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {sc.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model, optionally with a smoothness penalty")
    p.add_argument("--config", metavar="FILE", help="TOML file of train settings; flags override it")
    p.add_argument("--dataset", metavar="NAME", help="cifar10 (default), cifar100, digits, or an ImageFolder path")
    p.add_argument(
        "--data", metavar="PATH", help="where the data lives (an ImageFolder .tar.gz/dir, or the official files' root)"
    )
    p.add_argument("--model", metavar="NAME", help=f"one of: {', '.join(models.list_models())}")
    p.add_argument("--width", type=int, metavar="N", help="channels of the first stage (model default if omitted)")
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="global batch size (split across torchrun processes)")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate")
    p.add_argument("--reg", choices=REG_KINDS, help="smoothness penalty")
    p.add_argument("--weight", type=float, metavar="W", help="penalty weight (on weight decay's scale)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument(
        "--out", metavar="FOLDER", help="run folder (metrics.jsonl, config.toml, checkpoint, model.safetensors)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (without --config: with the run's config.toml)",
    )
    p.set_defaults(func=cmd_train)

    for name, helptext, family, default in (
        ("compress", "replace layers by truncated-SVD factors (no fine-tuning)", "low-rank", "svd"),
        ("prune", "prune by magnitude or remove filters (no fine-tuning)", "pruning", "magnitude"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_model_args(p)
        p.add_argument("--rate", type=float, metavar="RATE", default=None if name == "compress" else 0.7,
                       help="fraction of all parameters to remove (default 0.7"
                       + (", or none with --flops)" if name == "compress" else ")"))  # fmt: skip
        if name == "compress":
            p.add_argument("--flops", type=float, metavar="F", help="FLOPs budget: fraction of the model's FLOPs "
                           "to keep, e.g. 0.5 (at most; with --rate, both budgets hold)")  # fmt: skip
            p.add_argument("--latency", type=float, metavar="F", help="latency budget: fraction of the model's "
                           "measured time to keep, e.g. 0.5, on --input-shape in --runtime on this machine "
                           "(with --rate/--flops, all budgets hold)")  # fmt: skip
            p.add_argument("--runtime", choices=("eager", "onnxruntime"), default=None,
                           help="where --latency is measured (default eager; onnxruntime: the onnx extra)")  # fmt: skip
            p.add_argument("--input-shape", type=int, nargs="+", metavar="N", help="input shape with the batch "
                           "for --latency (and --flops), e.g. 128 3 32 32 (default: the model's, batch 1)")  # fmt: skip
        p.add_argument(
            "--exclude",
            action="append",
            default=[],
            metavar="LAYER",
            help=f"layer to leave alone: {ENTRY_HELP} (repeatable)",
        )
        p.add_argument("-o", "--output", metavar="FILE", help="write the result here (.safetensors)")
        _add_data_args(p)
        _add_method_args(p, family, default)
        p.add_argument(
            "--calibrate",
            type=int,
            metavar="N",
            help=f"calibration images from the training split of --data, for the methods that use data "
            f"(default {CALIBRATION_IMAGES}); forward passes only, no gradient step",
        )
        if name == "compress":
            p.add_argument(
                "--rank",
                action="append",
                default=[],
                metavar="LAYER=RANK",
                help="explicit rank of a layer (repeatable)",
            )
        p.set_defaults(func=cmd_compress)

    p = sub.add_parser("evaluate", help="test accuracy of a saved model or of an ONNX file (onnxruntime)")
    _add_model_args(p, onnx=True)
    _add_data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a saved model to ONNX")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--input-shape", type=int, nargs="+", metavar="N", help="input shape with batch, e.g. 1 3 32 32")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="train a grid, compress every model at every rate, write results rows")
    p.add_argument("config", metavar="CONFIG", help="a sweep TOML file or a preset name: demo, cifar10-cpu, ...")
    p.add_argument("--out", metavar="FOLDER", help="output folder (default: the config's `out`)")
    p.add_argument(
        "--data", metavar="PATH", help="where the dataset lives, overriding the config (e.g. an ImageFolder .tar.gz)"
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run only the I-th of N disjoint slices of the training runs (numbered from 1, e.g. "
        "$SLURM_ARRAY_TASK_ID/4 with --array=1-4), into OUT/shard-I-of-N/; `report OUT` merges the shards. "
        "With --plan, all/N lists every shard of N",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the settings (an `extends` chain merged), each training run with its shard, and the epochs and "
        "cells already done in OUT; train nothing (safe while the shards run). With --shard all/N: every shard of N",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write report.md, a summary table and plots from a sweep's results")
    p.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="the sweep folder (its shards merged), a results.jsonl file, or several results files of one sweep",
    )
    p.add_argument(
        "-o", "--output", metavar="FOLDER", help="output folder (default: report/ in the folder holding the results)"
    )
    p.add_argument(
        "--reference",
        metavar="FOLDER",
        action="append",
        help="a sweep of the same network trained small (e.g. the cifar10-cpu-small or cifar10-cpu-lowrank preset): "
        "a line on the plot and a section comparing each compressed cell with it at equal parameters; repeat "
        "for several",
    )
    p.add_argument(
        "--floor",
        metavar="RATE:ACC",
        action="append",
        help="judge whether the best smooth model, compressed to RATE%% fewer parameters, keeps at least ACC%% "
        "accuracy, e.g. --floor 70:91 (the paper's headline); repeat for several rates",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the embedded demo: a small CNN on 8x8 digits; no download, CPU only")
    p.add_argument("--out", metavar="FOLDER", default="runs/demo", help="output folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    return parser


@contextlib.contextmanager
def epoch_lines(command: str):
    """Context: the ``smoothcompress`` logger's INFO records (the trainer's line per epoch) printed on stdout while
    a training command runs, when stdout is not a terminal and this process is rank 0 (or not under torchrun)."""
    logger = logging.getLogger("smoothcompress")
    if command not in TRAINING_COMMANDS or sys.stdout.isatty() or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def user_error(e: BaseException, command: str | None = None) -> str | None:
    """The one-line message of a user error, or ``None`` when ``e`` is a bug (which keeps its traceback).

    User errors: a :class:`~smoothcompress.errors.SmoothcompressError`, an error of opening a named file
    (:data:`USER_OS_ERRORS`). The message is in the terms of ``command`` (:func:`cli_terms`).
    """
    if isinstance(e, SmoothcompressError):
        text = str(e)
    elif isinstance(e, USER_OS_ERRORS):
        name = e.filename if e.filename is not None else None
        text = f"{name}: {e.strerror.lower()}" if name is not None and e.strerror else str(e)
    else:
        return None
    return cli_terms(text, command) or type(e).__name__


def cli_terms(message: str, command: str | None = "compress") -> str:
    """A library warning's or error's message on one line, in the terms of ``command``: with the flags of
    :data:`CLI_TERMS` for the commands that have them (:data:`FLAG_COMMANDS`)."""
    text = re.sub(r"^recalibrate_bn: ", "", " ".join(str(message).split()))
    for pattern, replacement in CLI_TERMS if command in FLAG_COMMANDS else ():
        text = pattern.sub(replacement, text)
    return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`ParseError` (printed by :func:`main` as one line)."""

    def error(self, message: str):
        raise ParseError(f"{message} (see {self.prog} --help)", self.prog)


class ParseError(ConfigError):
    """The command line does not parse; ``prog`` is the (sub)command whose arguments are wrong."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    0 on success, 2 on a user error (one line on stderr), 130 when interrupted; a bug raises. ``--help`` and
    ``--version`` exit through ``SystemExit(0)``, as argparse does.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ParseError as e:
        print(f"{e.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    prefix = f"smoothcompress {args.command}"

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {cli_terms(message, args.command)}", file=sys.stderr)

    try:
        with epoch_lines(args.command), warnings.catch_warnings():
            warnings.showwarning = show
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error(e, args.command)
        if message is None or os.environ.get("SMOOTHCOMPRESS_DEBUG"):
            raise
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
