"""User errors are the project's errors, printed by the command line as one line; bugs keep their traceback."""

import pytest
import torch
from torch import nn

import smoothcompress as sc
from smoothcompress.cli import cli_terms, main, user_error
from smoothcompress.errors import ConfigError, FileContentError, SmoothcompressError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "cnn.safetensors"
    sc.save(sc.create_model("cnn", width=8), path)
    return str(path)


@pytest.mark.parametrize(
    "cls", [sc.CheckpointError, sc.DataError, sc.RateUnreachable, sc.TrainingDiverged, ConfigError, FileContentError]
)
def test_every_project_error_is_a_smoothcompress_error_and_a_value_error(cls):
    assert issubclass(cls, SmoothcompressError) and issubclass(cls, ValueError)


def test_data_and_training_errors_stay_runtime_errors():
    assert issubclass(sc.DataError, RuntimeError) and issubclass(sc.TrainingDiverged, RuntimeError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sc.compress(sc.create_model("mlp", width=16), 1.5),
        lambda: sc.count_flops(sc.create_model("mlp", width=16), (0, 64)),
        lambda: sc.create_model("no-such-model"),
        lambda: sc.TrainConfig(epochs="three"),
        lambda: sc.TrainConfig.from_dict({"epochz": 1}),
        lambda: sc.compress(sc.create_model("mlp", width=16), 0.5, allocation="nope"),
        lambda: sc.export_onnx(sc.create_model("mlp", width=16), "never.onnx", (8,)),
    ],
)
def test_user_input_errors_of_the_library_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()


def test_a_bug_keeps_its_traceback(model_file, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(sc, "load", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["evaluate", model_file, "--dataset", "digits"])
    monkeypatch.setattr(sc, "load", lambda *a, **k: {}["missing"])
    with pytest.raises(KeyError):
        main(["export", model_file, "-o", "never.onnx"])


@pytest.mark.parametrize(
    "call",
    [
        lambda: sc.get_method("svd", rank_multiple=0),
        lambda: sc.get_method("nope"),
        lambda: sc.Smoothness("nope", 1e-3),
        lambda: sc.penalty(torch.zeros(3), "first"),
        lambda: sc.calibrate(nn.Linear(2, 2), [torch.zeros(1, 2)], images=0),
    ],
)
def test_methods_penalties_and_calibration_raise_config_errors_on_user_input(call):
    with pytest.raises(ConfigError) as info:
        call()
    assert user_error(info.value) == str(info.value)  # one line, status 2 on the command line


@pytest.mark.parametrize(
    "argv, line",
    [
        (["compress"], "smoothcompress compress: error: the following arguments are required: MODEL"),
        (["compress", "{model}", "--rate", "abc"], "smoothcompress compress: error: argument --rate: invalid float"),
        (["nope"], "smoothcompress: error: argument COMMAND: invalid choice: 'nope'"),
        (["evaluate", "{model}.missing", "--dataset", "digits"], "smoothcompress evaluate: error: no checkpoint at"),
        (
            ["compress", "{model}", "--rank-multiple", "0"],
            "smoothcompress compress: error: method 'svd': rank_multiple",
        ),
        (["compress", "{model}", "--method", "svd-data", "--calibrate", "0"], "--calibrate takes a number of images"),
        (["train", "--model", "nope", "--dataset", "digits", "--out", "{tmp}/r"], "unknown model 'nope'"),
    ],
)
def test_user_errors_and_parse_errors_are_one_line_with_status_2(model_file, tmp_path, capsys, argv, line):
    argv = [a.replace("{model}", model_file).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1 and "Traceback" not in err and "usage:" not in err


def test_library_warnings_are_one_line_in_the_command_lines_terms(model_file, capsys):
    argv = ["compress", model_file, "--method", "svd-data", "--calibrate", "1", "--dataset", "digits", "--rate", "0.5"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("smoothcompress compress: warning: ")
    assert "--calibrate 32" in err[0] and "images >=" not in err[0] and ".py" not in err[0]


def test_cli_terms():
    assert cli_terms("Pass images >= 128 for\nfull-rank moments.") == "Pass --calibrate 128 for full-rank moments."
    assert cli_terms("achieved rate 0.5 ... the requested 0.7 (allocation='uniform')") == (
        "achieved rate 0.5 ... the requested --rate 0.7 (--allocation uniform)"
    )
    assert cli_terms("out of reach with allocation='global' and scheme='channel'") == (
        "out of reach with --allocation global and --scheme channel"
    )
    for command in ("sweep", "report", None):  # commands without these flags keep the library's terms
        assert cli_terms("Pass images >= 2 (allocation='global')", command) == "Pass images >= 2 (allocation='global')"
