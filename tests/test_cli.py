"""The command line: every subcommand parses and calls the API; user errors are one line, exit status 2."""

import logging
import re
import subprocess
import sys

import pytest
import torch

import smoothcompress as sc
from smoothcompress.cli import main

DIGITS = ["--dataset", "digits", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    argv = ["train", "--dataset", "digits", "--model", "cnn", "--width", "8", "--epochs", "2", "--batch-size", "128"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_console_script_help_and_version():
    exe = [sys.executable, "-m", "smoothcompress"]
    assert "compress" in subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True).stdout
    version = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"smoothcompress {sc.__version__}"


def test_train_writes_run_folder(trained, capsys):
    for name in ("model.safetensors", "metrics.jsonl", "config.toml", "checkpoint.pt"):
        assert (trained / name).exists(), name


def test_compress_prints_table_accuracy_and_saves(trained, tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["compress", str(trained / "model.safetensors"), "--rate", "0.5", "-o", str(out), *DIGITS]) == 0
    text = capsys.readouterr().out
    assert "total params" in text and "factorized" in text and "test accuracy on digits" in text
    small = sc.load(out)
    assert sc.count_params(small) <= 0.51 * sc.count_params(sc.load(trained / "model.safetensors"))


def test_compress_without_output_says_nothing_was_saved(trained, capsys):
    assert main(["compress", str(trained / "model.safetensors"), "--rate", "0.5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "nothing saved: pass -o FILE.safetensors to write the result"


def test_a_missing_data_file_is_not_downloaded(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(sc.DataError, match=r"pets\.tar\.gz: no such file"):
        sc.study.training.load_dataset_for(sc.TrainConfig(dataset="cifar10", data="pets.tar.gz"))


@pytest.mark.parametrize("method", ["magnitude", "filter"])
def test_prune_prints_the_same_table(trained, tmp_path, capsys, method):
    out = tmp_path / f"{method}.safetensors"
    argv = ["prune", str(trained / "model.safetensors"), "--rate", "0.5", "--method", method, "-o", str(out)]
    assert main([*argv, *DIGITS]) == 0
    text = capsys.readouterr().out
    assert ("non-zero params" in text) == (method == "magnitude") and "test accuracy" in text
    assert out.exists()


def test_method_options_are_flags_and_reach_the_saved_record(trained, tmp_path, capsys):
    out = tmp_path / "spatial.safetensors"
    argv = ["compress", str(trained / "model.safetensors"), "--rate", "0.5", "--scheme", "spatial", "-o", str(out)]
    assert main([*argv, "--rank-multiple", "2"]) == 0
    record = sc.load(out).sc_compression
    assert record.label == "svd-global-spatial-x2" and record.options["scheme"] == "spatial"
    assert "svd-global-spatial-x2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    help_text = capsys.readouterr().out  # each option's description is its flag's help
    assert "--rank-multiple" in help_text and "CPU speed" in help_text and "--method {svd," in help_text
    assert "--calibrate N" in help_text and "training split" in help_text


@pytest.mark.parametrize(("command", "method"), [("compress", "svd-data+bn"), ("prune", "filter+bn")])
def test_calibrate_uses_training_images_and_is_recorded(trained, tmp_path, capsys, command, method):
    out = tmp_path / "small.safetensors"
    argv = [command, str(trained / "model.safetensors"), "--rate", "0.5", "--method", method, "--calibrate", "96"]
    assert main([*argv, "-o", str(out), *DIGITS]) == 0
    assert "test accuracy on digits" in capsys.readouterr().out
    details = sc.load(out).sc_compression.details
    assert details["bn_recalibration"] == {"images": 96, "split": "train"}
    if method.startswith("svd-data"):
        assert details["calibration"]["images"] == 96 and details["calibration"]["split"] == "train"


def test_a_pruned_file_records_its_method(trained, tmp_path):
    out = tmp_path / "filter.safetensors"
    argv = ["prune", str(trained / "model.safetensors"), "--rate", "0.5", "--method", "filter", "-o", str(out)]
    assert main(argv) == 0
    record = sc.read_metadata(out)["compression"]
    assert record["method"] == "filter" and record["rate_requested"] == 0.5


def test_evaluate_counts_the_non_zeros_of_a_magnitude_pruned_file(trained, tmp_path, capsys):
    out = tmp_path / "magnitude.safetensors"
    assert main(["prune", str(trained / "model.safetensors"), "--rate", "0.5", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *DIGITS]) == 0
    model = sc.load(out)
    total, nonzero = sc.count_params(model), sc.count_params(model, nonzero=True)
    assert f"({total:,} params, {nonzero:,} non-zero)" in capsys.readouterr().out and nonzero < total
    assert main(["evaluate", str(trained / "model.safetensors"), *DIGITS]) == 0
    assert "non-zero" not in capsys.readouterr().out


def test_a_layer_given_two_ranks_is_refused(trained, capsys):
    argv = ["compress", str(trained / "model.safetensors"), "--rank", "fc=2", "--rank", "fc=8"]
    assert main(argv) == 2
    assert "--rank names layer(s) fc more than once; give each layer one rank" in capsys.readouterr().err


def test_the_command_line_loads_no_plotting_or_pruning_library():
    code = (
        "import sys; from smoothcompress.cli import build_parser; build_parser().format_help(); "
        "print('matplotlib' in sys.modules, 'torch_pruning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_evaluate_and_export(trained, tmp_path, capsys):
    assert main(["evaluate", str(trained / "model.safetensors"), *DIGITS]) == 0
    assert "test accuracy on digits" in capsys.readouterr().out
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(trained / "model.safetensors"), "-o", str(onnx)]) == 0
    assert onnx.stat().st_size > 1000


def test_train_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('dataset = "digits"\nmodel = "mlp"\nwidth = 16\nepochs = 3\ndevice = "cpu"\n')
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    assert sc.TrainConfig.from_toml(tmp_path / "r" / "config.toml").epochs == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "missing.safetensors"], "missing.safetensors"),
        (["compress", "{model}", "--rate", "1.5"], "rate"),
        (["compress", "{model}", "--rank", "fc=abc"], "LAYER=RANK"),
        (["compress", "{model}", "--allocation", "uniform", "--rate", "0.99"], "out of reach"),
        (["compress", "{model}", "--allocation", "uniform", "--rate", "0.99"], "--allocation uniform"),
        (
            ["compress", "{model}", "--method", "svd+bn"],
            "needs calibration data (training images, forward passes only): pass --dataset NAME and/or --data PATH",
        ),
        (
            ["compress", "{model}", "--method", "svd+bn", "--calibrate", "1", *DIGITS],
            "skips batches of a single input, and the calibration data gave only such batches: pass --calibrate 2",
        ),
        (["evaluate", "{model}"], "needs data"),
        (["compress", "{model}", "--method", "svd-data"], "needs calibration data"),
        (["compress", "{model}", "--calibrate", "64", *DIGITS], "--calibrate applies to the methods that use data"),
        (["sweep", "no-such-preset"], "preset name"),
        (["train", "--config", "{model}"], "TOML"),
        (["evaluate", "{model}", "--dataset", "digits", "--data", "{model}"], "--dataset digits is bundled"),
        (["train", "--dataset", "digits", "--data", "{tmp}", "--out", "{tmp}/run"], "--dataset digits is bundled"),
        (["evaluate", "{model}", "--dataset", "pets.tar.gz", "--data", "other.tar.gz"], "both name the data"),
        (["evaluate", "{model}", "--data", "no-such-dir/pets.tar.gz"], "no-such-dir/pets.tar.gz: no such file"),
        (["export", "{model}", "-o", "{tmp}/m.onnx", "--input-shape", "1", "3", "8", "8"], "does not fit the model"),
    ],
)
def test_user_errors_are_one_line_with_status_2(trained, tmp_path, capsys, argv, message):
    argv = [a.replace("{model}", str(trained / "model.safetensors")).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_corrupt_model_file_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["evaluate", str(bad), *DIGITS]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_loaded_model_runs(trained):
    model = sc.load(trained / "model.safetensors").eval()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_train_prints_a_line_per_epoch_without_a_terminal(tmp_path):
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--width", "16", "--epochs", "2", "--reg", "first",
            "--weight", "0.01", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "smoothcompress", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[2].startswith("test accuracy"), proc.stdout
    epoch_line = r"epoch {}/2  loss \S+  train_acc \S+  test_acc \S+  penalty \S+  \d+ img/s"
    assert re.fullmatch(epoch_line.format(1) + r"  \d+ (s|min) left", lines[0])  # the time the run still needs
    assert re.fullmatch(epoch_line.format(2), lines[1])
    assert proc.stderr == ""  # no progress bar without a terminal


def test_the_library_stays_quiet_and_main_restores_logging(tmp_path, capsys):
    logger = logging.getLogger("smoothcompress")
    before = (list(logger.handlers), logger.level)
    sc.study.training.run(
        sc.TrainConfig(dataset="digits", model="mlp", width=16, epochs=1, device="cpu", out=str(tmp_path))
    )
    assert capsys.readouterr() == ("", "")
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--width", "16", "--epochs", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.startswith("epoch 1/1  loss ")
    assert (list(logger.handlers), logger.level) == before


def test_sweep_then_report_into_the_sweep_folder(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'out = "ignored"\n[train]\ndataset = "digits"\nmodel = "mlp"\nwidth = 64\nepochs = 1\ndevice = "cpu"\n'
        '[compress]\nrates = [0.5]\nmethods = [{ method = "svd" }]\n'
    )
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "sw")]) == 0
    assert re.search(r"^epoch 1/1  loss ", capsys.readouterr().out, re.MULTILINE)  # a line per epoch, no terminal
    assert main(["report", str(tmp_path / "sw")]) == 0
    assert (tmp_path / "sw" / "report" / "report.md").exists()
    assert "| baseline | svd-global-channel | 1 |" in capsys.readouterr().out


def test_the_totals_line_names_the_method_that_ran(trained, capsys):
    assert (
        main(["prune", str(trained / "model.safetensors"), "--rate", "0.5", "--method", "magnitude+bn", *DIGITS]) == 0
    )
    assert "magnitude+bn" in capsys.readouterr().out.split("test accuracy")[0]
