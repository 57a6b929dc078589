"""The factorized architecture trained from scratch: ranks files and ``TrainConfig.lowrank_ranks``."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smoothcompress as sc
from smoothcompress.errors import ConfigError, FileContentError
from smoothcompress.factorized import FactorizedConv2d, FactorizedLinear
from smoothcompress.rankfile import RANKS_FORMAT, plan_rank_file, read_ranks, write_ranks
from smoothcompress.study.training import TrainConfig, run


def _ranks_of(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, FactorizedConv2d | FactorizedLinear)}


@settings(max_examples=10, deadline=None)
@given(rates=st.lists(st.sampled_from([0.3, 0.5, 0.7, 0.8]), min_size=1, max_size=3, unique=True))
def test_a_ranks_file_rebuilds_the_architecture_compress_picks(tmp_path_factory, rates):
    torch.manual_seed(0)
    model = sc.create_model("cnn", num_classes=10, width=8)
    path = write_ranks(tmp_path_factory.mktemp("r") / "ranks.json", plan_rank_file(model, rates), source={"x": 1})
    fresh = sc.create_model("cnn", num_classes=10, width=8)  # same shapes, other weights
    for rate in rates:
        ranks = read_ranks(path, rate)
        assert _ranks_of(sc.compress(fresh, ranks=ranks)) == _ranks_of(sc.compress(model, rate)) == ranks


def _file(tmp_path, body) -> str:
    path = tmp_path / "ranks.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


@pytest.mark.parametrize(
    "body, error, match",
    [
        ("not json", FileContentError, "not a ranks file"),
        ({"ranks": {}}, FileContentError, "not a ranks file"),
        ({"format": RANKS_FORMAT, "ranks": {"0.8": {"a": 2}}}, ConfigError, r"no ranks for rate 0.7; .* rates 0.8"),
        ({"format": RANKS_FORMAT, "ranks": {"0.7": {"a": 0, "b": 2}}}, FileContentError, "bad: a"),
        ({"format": RANKS_FORMAT, "ranks": {"0.7": [1, 2]}}, FileContentError, "expected"),
    ],
)
def test_a_bad_ranks_file_is_a_one_line_error(tmp_path, body, error, match):
    with pytest.raises(error, match=match):
        read_ranks(_file(tmp_path, body), 0.7)


def test_lowrank_keys_go_together():
    with pytest.raises(ConfigError, match="go together"):
        TrainConfig(lowrank_ranks="ranks.json")
    with pytest.raises(ConfigError, match=r"lowrank_rate must be .* \(0, 1\)"):
        TrainConfig(lowrank_ranks="ranks.json", lowrank_rate=1.5)


def test_run_trains_the_factorized_architecture_from_scratch(tmp_path):
    template = sc.create_model("mlp", num_classes=10, in_features=64, width=16)
    path = write_ranks(tmp_path / "ranks.json", plan_rank_file(template, [0.5]))
    ranks = read_ranks(path, 0.5)
    config = TrainConfig(
        dataset="digits", model="mlp", width=16, epochs=1, device="cpu", out=str(tmp_path / "r"),
        lowrank_ranks=str(path), lowrank_rate=0.5,
    )  # fmt: skip
    result = run(config)
    assert _ranks_of(result.model) == ranks
    saved = sc.load(tmp_path / "r" / "model.safetensors")
    assert _ranks_of(saved) == ranks and sc.count_params(saved) == sc.count_params(result.model)
    assert sc.count_params(saved) < sc.count_params(template)


def test_ranks_of_another_model_are_refused(tmp_path):
    other = sc.create_model("mlp", num_classes=10, in_features=64, width=16)
    ranks = {f"not.{n}": r for n, r in plan_rank_file(other, [0.5])["0.5"].items()}
    path = write_ranks(tmp_path / "ranks.json", {"0.5": ranks})
    config = TrainConfig(dataset="digits", model="mlp", width=16, epochs=1, device="cpu", out=str(tmp_path / "r"),
                         lowrank_ranks=str(path), lowrank_rate=0.5)  # fmt: skip
    with pytest.raises(ConfigError, match="not an eligible layer"):
        run(config)
