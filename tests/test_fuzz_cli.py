"""Fuzzing the command line: random option values, missing files and stray arguments for every subcommand give
exit status 0 or 2, and on 2 one line on stderr; never a traceback. ``main`` runs in this process."""

import urllib.request

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smoothcompress as sc
from smoothcompress.cli import main

VALUE = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
    st.integers(-3, 3).map(str),
    st.sampled_from(["nan", "inf", "-1", "0", "1.5", "1e9", "0.5", "missing.safetensors", "x:y", "a=b", "--"]),
)
OPTIONS = {
    "train": ["--config", "--dataset", "--data", "--model", "--width", "--epochs", "--batch-size", "--lr", "--reg",
              "--weight", "--seed", "--device"],
    "compress": ["--rate", "--flops", "--exclude", "--dataset", "--data", "--method", "--allocation", "--scheme",
                 "--rank-multiple", "--calibrate", "--rank", "--model-factory", "--device"],
    "prune": ["--rate", "--exclude", "--dataset", "--data", "--method", "--calibrate", "--model-factory"],
    "evaluate": ["--dataset", "--data", "--device", "--model-factory"],
    "export": ["--input-shape", "--model-factory"],
    "sweep": ["--shard", "--data"],
    "report": ["--reference"],
    "demo": ["--nope"],
}  # fmt: skip


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    sc.save(sc.create_model("mlp", width=16), path)
    return str(path)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    def no_network(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("SMOOTHCOMPRESS_DATA", str(tmp_path_factory.mktemp("data")))


def argv_for(command: str, model: str, out: str):
    # demo is only fuzzed with a stray option: a valid demo is a full sweep
    options = st.lists(st.tuples(st.sampled_from(OPTIONS[command]), VALUE), min_size=command == "demo", max_size=3)
    positional = {
        "compress": st.sampled_from([model, "missing.safetensors", out]),
        "prune": st.sampled_from([model, "missing.safetensors"]),
        "evaluate": st.sampled_from([model, "missing.safetensors"]),
        "export": st.sampled_from([model, out]),
        "sweep": st.one_of(VALUE, st.just("no-such-preset")),
        "report": st.one_of(VALUE, st.sampled_from([model, out])),
    }.get(command, st.just(None))
    fixed = {
        "train": ["--epochs", "0", "--out", f"{out}/run"],  # a valid set never trains long
        "export": ["-o", f"{out}/m.onnx"],
        "sweep": ["--out", f"{out}/sweep"],
        "demo": ["--out", f"{out}/demo"],
    }.get(command, [])
    return st.builds(
        lambda pos, opts: [command, *([pos] if pos is not None else []), *fixed, *(x for o in opts for x in o)],
        positional,
        options,
    )


FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_subcommand_exits_0_or_2_with_one_line(command, model_file, tmp_path_factory, capsys):
    out = str(tmp_path_factory.mktemp(command))

    @FUZZ
    @given(argv=argv_for(command, model_file, out))
    def check(argv):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            lines = [line for line in err.splitlines() if ": warning: " not in line]
            assert len(lines) == 1 and lines[0].startswith("smoothcompress"), (argv, err)
        assert "Traceback" not in err, (argv, err)

    check()
