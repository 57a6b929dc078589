"""Sweep: grid expansion, results rows with provenance, resumability, bad configs."""

import json
import os
import socket
import subprocess
import sys

import pytest

import smoothcompress as sc
from smoothcompress.files import read_jsonl
from smoothcompress.study.experiment import PRESETS_DIR, SweepConfig, read_sweep_file, resolve_config, sweep
from smoothcompress.study.training import read_toml

TINY = {
    "out": "unused",
    "train": {"dataset": "digits", "model": "mlp", "width": 128, "epochs": 2, "batch_size": 128, "device": "cpu"},
    "grid": {"seeds": [0], "regularizers": [{"kind": "none"}, {"kind": "nuclear", "weight": 0.01}]},
    "compress": {"rates": [0.5, 0.8], "methods": [{"method": "svd"}, {"method": "magnitude"}]},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return sweep(SweepConfig.from_dict(TINY, out=out))


def test_rows_cover_the_grid_with_provenance(swept):
    rows = read_jsonl(swept)
    assert len(rows) == 2 * (1 + 2 * 2)
    assert {(r["reg"], r["label"], r["rate_requested"]) for r in rows} >= {
        ("none", "dense", 0.0),
        ("nuclear", "svd-global-channel", 0.8),
        ("nuclear", "magnitude", 0.5),
    }
    for r in rows:
        for key in ("commit", "device", "dataset", "dataset_sha256", "seed", "wall_s", "torch", "accuracy"):
            assert r[key] is not None, key
        assert r["dataset"] == "digits" and len(r["dataset_sha256"]) == 64
        assert r["weight"] == (0.01 if r["reg"] == "nuclear" else 0.0) and "lam" not in r
        assert (r["allocation"], r["scheme"]) == (("global", "channel") if r["method"] == "svd" else (None, None))
        if r["label"] != "dense":
            assert abs(r["rate_achieved"] - r["rate_requested"]) <= 0.01
    spectra = read_jsonl(swept.with_name("spectra.jsonl"))
    assert {s["reg"] for s in spectra} == {"none", "nuclear"}


def test_data_methods_calibrate_once_on_training_images(tmp_path):
    config = {
        "train": {"dataset": "digits", "model": "cnn", "width": 8, "epochs": 1, "batch_size": 128, "device": "cpu"},
        "grid": {"regularizers": [{"kind": "none"}]},
        "compress": {
            "rates": [0.4, 0.6],
            "methods": [{"method": "svd-data+bn"}, {"method": "svd-data"}, {"method": "filter+bn"}],
            "calibration_images": 64,
        },
    }
    rows = [r for r in read_jsonl(sweep(SweepConfig.from_dict(config, out=tmp_path))) if r["label"] != "dense"]
    assert {r["label"] for r in rows} == {"svd-data+bn-global-channel", "svd-data-global-channel", "filter+bn"}
    assert all(r["calibration_images"] == 64 and r["calibration_split"] == "train" for r in rows)
    assert sum("calibration_s" in r for r in rows) == 1  # one calibration serves every data-aware cell
    assert all(r["accuracy"] is not None for r in rows)
    assert all(r["calibration_requested"] == 64 for r in rows)
    results = tmp_path / "results.jsonl"
    before = results.read_bytes()
    for images, rates in ((32, [0.4, 0.6]), (32, [0.4, 0.6, 0.8]), (10**6, [0.4, 0.6])):
        changed = {**config, "compress": {**config["compress"], "calibration_images": images, "rates": rates}}
        with pytest.raises(ValueError, match=f"calibrated on 64 images; .*calibration_images = {images} now gives"):
            sweep(SweepConfig.from_dict(changed, out=tmp_path))
        assert results.read_bytes() == before  # nothing added, nothing lost
    sweep(SweepConfig.from_dict(config, out=tmp_path))  # the same settings resume
    assert results.read_bytes() == before


def test_rerun_skips_finished_cells_and_fills_missing_ones(swept, capsys):
    lines = swept.read_text().splitlines()
    swept.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # drop one row, leave a torn line
    sweep(SweepConfig.from_dict(TINY, out=swept.parent))

    def keys(rows):
        return sorted((r["run"], r["label"], r["rate_requested"]) for r in rows)

    assert keys(read_jsonl(swept)) == keys(json.loads(line) for line in lines)
    assert "skipping training" in capsys.readouterr().out


def test_model_files_load(swept):
    model = sc.load(next((swept.parent / "runs").glob("*nuclear*")) / "model.safetensors")
    assert sc.count_params(model) > 0


def test_grid_expansion_and_tags():
    raw = dict(
        TINY,
        grid={
            "seeds": [0, 1],
            "regularizers": [{"kind": "first", "weight": [1e-3, 1e-2]}],
            "variants": [{"width": 8}, {"width": 16}],
        },
    )
    cfg = SweepConfig.from_dict(raw)
    assert len(cfg.runs) == 2 * 2 * 2
    tags = {r.tag(cfg.train) for r in cfg.runs}
    assert "mlp-w8-first0.001-s1" in tags and len(tags) == 8


def test_a_regularizer_entry_sets_its_own_penalty_options():
    raw = dict(
        TINY,
        grid={
            "regularizers": [
                {"kind": "none"},
                {"kind": "second", "weight": [1e-3, 1e-2], "reg_axes": ["out"]},
                {"kind": "first", "weight": 1e-3, "reg_scale_free": True, "reg_delay_epochs": 1},
            ]
        },
    )
    cfg = SweepConfig.from_dict(raw)
    by_tag = {r.tag(cfg.train): r for r in cfg.runs}
    assert set(by_tag) == {
        "mlp-w128-none-s0",
        "mlp-w128-reg_axesout-second0.001-s0",
        "mlp-w128-reg_axesout-second0.01-s0",
        "mlp-w128-reg_delay_epochs1-reg_scale_freeTrue-first0.001-s0",
    }
    second = by_tag["mlp-w128-reg_axesout-second0.01-s0"]
    assert second.train_overrides()["reg_axes"] == ("out",) and second.variant_name() == "reg_axes=out"
    assert by_tag["mlp-w128-none-s0"].variant == ()  # options stay with their entry
    with pytest.raises(ValueError, match="unknown key.*lr"):  # training settings belong in [train] or variants
        SweepConfig.from_dict(dict(TINY, grid={"regularizers": [{"kind": "first", "weight": 1e-3, "lr": 0.1}]}))
    with pytest.raises(ValueError, match="need kind='nuclear'"):
        SweepConfig.from_dict(dict(TINY, grid={"regularizers": [{"kind": "first", "weight": 1, "reg_refresh": 5}]}))
    clash = {"regularizers": [{"kind": "first", "weight": 1e-3, "reg_p": 2.0}], "variants": [{"reg_p": 1.0}]}
    with pytest.raises(ValueError, match="reg_p is set both by a variant and by the first entry"):
        SweepConfig.from_dict(dict(TINY, grid=clash))


def test_the_old_name_lam_is_an_unknown_key():
    old = dict(TINY, grid={"regularizers": [{"kind": "nuclear", "lam": [1e-3, 1e-2]}]})
    with pytest.raises(ValueError, match=r"^\[grid\] regularizers entry: unknown key\(s\) lam; expected "):
        SweepConfig.from_dict(old)


def test_methods_dispatch_through_the_registry():
    entries = [{"method": "svd", "allocation": "uniform", "scheme": "spatial"}, {"method": "filter"}]
    cfg = SweepConfig.from_dict(dict(TINY, compress={"methods": entries}))
    assert cfg.methods == (sc.get_method("svd", allocation="uniform", scheme="spatial"), sc.get_method("filter"))
    assert [m.label for m in cfg.methods] == ["svd-uniform-spatial", "filter"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, "unknown key.*bogus"),
        ({"train": {"nope": 1}}, "unknown config key"),
        ({"compress": {"rates": [1.5]}}, "rates must lie in"),
        ({"compress": {"methods": [{"method": "zip"}]}}, "unknown method 'zip'"),
        ({"compress": {"methods": [{"method": "magnitude", "scheme": "channel"}]}}, "'magnitude' has no option scheme"),
        ({"compress": {"methods": [{"method": "svd", "scheme": "diag"}]}}, "scheme must be one of"),
        ({"grid": {"regularizers": [{"weight": 1.0}]}}, "has no 'kind'"),
    ],
)
def test_bad_configs_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig.from_dict({**TINY, **change})


def test_presets_resolve_and_parse():
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    assert {"demo", "cifar10-cpu", "cifar10-cpu-v2", "cifar10-cpu-small", "cifar10-paper"} <= set(names)
    for name in names:
        cfg = SweepConfig.from_toml(resolve_config(name))
        assert cfg.runs and cfg.rates and all(isinstance(m, sc.Method) for m in cfg.methods)
    with pytest.raises(ValueError, match="preset name"):
        resolve_config("no-such-preset")


def test_conv_model_on_validation_split_with_auto_device(tmp_path):
    """A conv net (evaluated in channels_last) through every method, on the validation split, device "auto"."""
    raw = {
        "train": {
            "dataset": "digits",
            "model": "cnn",
            "width": 8,
            "epochs": 2,
            "batch_size": 64,
            "device": "auto",
            "val_fraction": 0.2,
        },
        "grid": {"regularizers": [{"kind": "none"}]},
        "compress": {"rates": [0.5], "methods": [{"method": m} for m in ("svd", "magnitude", "filter")]},
    }
    rows = read_jsonl(sweep(SweepConfig.from_dict(raw, out=tmp_path)))
    assert {r["label"] for r in rows} == {"dense", "svd-global-channel", "magnitude", "filter"}
    assert all(r["split"] == "val" and r["dataset"].endswith("+val") and r["accuracy"] is not None for r in rows)
    assert rows[0]["accuracy"] > 0.3  # trained, and evaluated on the held-out split
    assert rows[0]["train_device"].startswith("cpu") and rows[0]["device"].startswith("cpu")


def test_changed_training_settings_are_refused_even_when_every_cell_is_done(swept):
    before = swept.read_bytes()
    changed = {**TINY, "train": {**TINY["train"], "epochs": 3}}
    with pytest.raises(ValueError, match=r"different settings \(epochs: 2 -> 3\)"):
        sweep(SweepConfig.from_dict(changed, out=swept.parent))
    assert swept.read_bytes() == before


def test_a_running_sweep_locks_its_folder(swept):
    lock = swept.parent / ".lock"
    assert not lock.exists()  # released when the sweep returned
    lock.write_text(f"{os.getpid()}@{socket.gethostname()}")  # a live owner: this very process
    try:
        with pytest.raises(FileExistsError, match=r"another sweep \(\d+@.*\) is writing to .*delete .*\.lock"):
            sweep(SweepConfig.from_dict(TINY, out=swept.parent))
        assert lock.exists()  # someone else's lock is left alone
    finally:
        lock.unlink()


def test_the_lock_of_a_killed_sweep_is_taken_over(swept):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs
    lock = swept.parent / ".lock"
    lock.write_text(f"{dead.pid}@{socket.gethostname()}")
    rows = read_jsonl(sweep(SweepConfig.from_dict(TINY, out=swept.parent)))  # all cells done: nothing retrained
    assert rows and not lock.exists()


@pytest.mark.parametrize("cpu_preset", ["cifar10-paper-cpu", "cifar10-paper-cpu-30ep"])
def test_paper_presets_differ_only_in_device_precision_and_epochs(cpu_preset):
    gpu, cpu = read_sweep_file(resolve_config("cifar10-paper")), read_sweep_file(resolve_config(cpu_preset))
    for key in ("grid", "compress"):
        assert gpu[key] == cpu[key]
    differ = {k for k in gpu["train"].keys() | cpu["train"].keys() if gpu["train"].get(k) != cpu["train"].get(k)}
    assert differ <= {"device", "bf16", "epochs"}
    own = read_toml(resolve_config(cpu_preset))  # the file itself says only what it changes
    assert set(own) == {"extends", "description", "out", "train"} and set(own["train"]) <= {"device", "bf16", "epochs"}
