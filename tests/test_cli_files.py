"""The command line names the file a user gave by what it is: a model file where results are expected, a PyTorch
pickle, a run folder, an already compressed model; ``--model-factory`` loads a model of the user's own class;
the help shows a metavar for every option and no path of the project's repository."""

import sys

import pytest
import torch
from torch import nn

import smoothcompress as sc
from smoothcompress.cli import build_parser, main

NET = """
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "model.safetensors"
    sc.save(sc.create_model("cnn", width=8), path)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_report_of_a_model_file(dense, capsys):
    assert main(["report", str(dense)]) == 2
    line = one_error_line(capsys)
    assert line.endswith(f"{dense} is a model file, not sweep results; give the sweep folder or its results.jsonl")


@pytest.mark.parametrize("command", ["compress", "prune", "evaluate", "export"])
@pytest.mark.parametrize("name", ["checkpoint.pt", "weights.pth"])
def test_a_pytorch_pickle_is_named(dense, tmp_path, capsys, command, name):
    pickle = tmp_path / name
    torch.save({"model": sc.load(dense).state_dict(), "epoch": 3}, pickle)
    extra = {"evaluate": ["--dataset", "digits"], "export": ["-o", str(tmp_path / "m.onnx")]}.get(command, [])
    assert main([command, str(pickle), *extra]) == 2
    line = one_error_line(capsys)
    assert f"{pickle} is a PyTorch pickle (a training checkpoint?); smoothcompress reads .safetensors files" in line
    assert not (tmp_path / "m.onnx").exists()


def test_a_training_checkpoint_points_at_its_model_file(dense, tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(dense.read_bytes())
    torch.save({"epoch": 1}, tmp_path / "checkpoint.pt", _use_new_zipfile_serialization=False)  # legacy pickle
    assert main(["compress", str(tmp_path / "checkpoint.pt")]) == 2
    assert one_error_line(capsys).endswith(f"the model of this run is {tmp_path / 'model.safetensors'}")
    assert main(["compress", str(tmp_path)]) == 2
    assert f"{tmp_path} is a run folder; give its model file" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["compress", "prune"])
def test_an_already_compressed_model_is_refused(dense, tmp_path, capsys, command):
    small = tmp_path / "small.safetensors"
    assert main(["compress", str(dense), "--rate", "0.7", "-o", str(small)]) == 0
    capsys.readouterr()
    assert main([command, str(small), "--rate", "0.5", "-o", str(tmp_path / "again.safetensors")]) == 2
    line = one_error_line(capsys)
    assert line.endswith(f"{small} is already compressed (svd-global-channel, 70% removed); compress the dense model")
    assert not (tmp_path / "again.safetensors").exists()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mynets_h20b.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("mynets_h20b", None)


def test_model_factory_loads_the_users_architecture(user_module, capsys):
    sys.path.insert(0, str(user_module))
    try:
        import mynets_h20b
    finally:
        sys.path.remove(str(user_module))
    torch.manual_seed(0)
    model = mynets_h20b.build()
    sc.save(model, "mine.safetensors")
    assert main(["compress", "mine.safetensors", "--rate", "0.5", "-o", "small.safetensors"]) == 2
    assert "load(path, model=MyNet(...))" in one_error_line(capsys)  # without a factory: not rebuildable
    argv = ["compress", "mine.safetensors", "--model-factory", "mynets_h20b:build", "--rate", "0.5"]
    assert main([*argv, "-o", "small.safetensors"]) == 0
    small = sc.load("small.safetensors", model=mynets_h20b.build())
    assert sc.count_params(small) <= 0.51 * sc.count_params(model)
    assert main(["export", "small.safetensors", "--model-factory", "mynets_h20b:build", "-o", "s.onnx",
                 "--input-shape", "1", "1", "8", "8"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mynets_h20b", "a model factory is MODULE:FUNCTION"),
        ("mynets_h20b:", "a model factory is MODULE:FUNCTION"),
        ("my nets:build", "a model factory is MODULE:FUNCTION"),
        ("no_such_module_h20b:build", "no module 'no_such_module_h20b'"),
        ("mynets_h20b:nope", "has no 'nope'"),
        ("mynets_h20b:NET_WIDTH", "not a function"),
    ],
)
def test_a_bad_model_factory_is_one_line(user_module, dense, capsys, spec, message):
    (user_module / "mynets_h20b.py").write_text(NET + "\nNET_WIDTH = 32\n")
    assert main(["evaluate", str(dense), "--model-factory", spec, "--dataset", "digits"]) == 2
    assert message in one_error_line(capsys)


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_has_a_metavar_for_every_option_and_no_repository_path(command):
    p = _subparsers()[command]
    for action in p._actions:
        if action.option_strings and action.nargs != 0:
            assert action.metavar is not None or action.choices is not None, (command, action.option_strings)
    text = p.format_help()
    for path in ("benchmarks/", "results/", "src/", "configs/", "(see lowrank)", ".json)"):
        assert path not in text, (command, path)


def test_every_model_command_takes_a_model_factory():
    for command in ("compress", "prune", "evaluate", "export"):
        assert "--model-factory MODULE:FUNCTION" in _subparsers()[command].format_help()


def test_torch_save_zip_and_legacy_pickle_are_recognised(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "a.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    for name in ("a.pt", "b.pt"):
        assert sc.io.file_kind(tmp_path / name) == "pytorch-pickle"
        with pytest.raises(sc.CheckpointError, match="PyTorch pickle"):
            sc.load(tmp_path / name)


@pytest.mark.parametrize("command", ["compress", "prune"])
def test_an_output_under_another_suffix_or_over_the_input_is_refused_before_any_work(dense, tmp_path, capsys, command):
    before = dense.read_bytes()
    assert main([command, str(dense), "--rate", "0.5", "-o", str(tmp_path / "small.onnx")]) == 2
    assert one_error_line(capsys).endswith("name it *.safetensors, not 'small.onnx' (for ONNX: smoothcompress export)")
    assert main([command, str(dense), "--rate", "0.5", "-o", str(dense)]) == 2
    assert one_error_line(capsys).endswith(f"-o {dense} is the input model: write the result to another file")
    assert dense.read_bytes() == before and not (tmp_path / "small.onnx").exists()
