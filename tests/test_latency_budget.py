"""compress(latency=...): the latency table (cost-model timer, cache, keys), the budget and its guarantees, the
record, errors, the CLI flag, and one small real-timer smoke test (no timing asserts)."""

import json
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.accounting import flops_by_module
from smoothcompress.cli import main
from smoothcompress.errors import ConfigError
from smoothcompress.extras import MissingExtra
from smoothcompress.factorized import Factorized
from smoothcompress.latency import (
    CACHE_ENV,
    LatencyUnreachable,
    LayerTimes,
    Timing,
    cache_path,
    check_latency,
    rank_grid,
)
from smoothcompress.lowrank import LATENCY_ROUNDS


class CostModel:
    """A deterministic timer: 1 ns per FLOP, plus ``penalty`` times the FLOPs of every factorized layer whose rank
    is not a multiple of 8 (an aligned-kernel effect). A whole model holding a factorized layer costs ``scale``
    times that, plus ``extra`` seconds (effects the per-layer table cannot see: fusion, caches, overheads). With
    ``scale=1`` and ``extra=0`` it is additive over layers, so the table predicts it exactly."""

    def __init__(self, penalty: float = 0.0, extra: float = 0.0, name: str = "cost-model", scale: float = 1.0):
        self.penalty, self.extra, self.name, self.scale = penalty, extra, name, scale
        self.calls = []

    def __call__(self, module: nn.Module, example) -> float:
        self.calls.append(type(module).__name__)
        by = flops_by_module(module, example=example)
        total = by[""]
        inner = [(n, m) for n, m in module.named_modules() if isinstance(m, Factorized)]
        total += sum(self.penalty * by.get(n, 0) for n, m in inner if m.rank % 8)
        whole = isinstance(module, nn.Sequential) and inner
        return 1e-9 * total * (self.scale if whole else 1.0) + (self.extra if whole else 0.0)


def cnn(c_in=3, c1=24, c2=40, classes=5):
    torch.manual_seed(c1 * 100 + c2)
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(c2, c2, 3, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c2, classes),
    )


def mlp(d_in=64, h1=64, h2=64, classes=5):
    torch.manual_seed(h1 * 100 + h2)
    return nn.Sequential(nn.Linear(d_in, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, classes))


@st.composite
def small_models(draw):
    """A small CNN or MLP with random shapes, and its input shape (batch included)."""
    if draw(st.booleans()):
        c_in, c1, c2 = draw(st.integers(1, 3)), draw(st.integers(8, 32)), draw(st.integers(8, 32))
        hw = draw(st.integers(6, 10))
        return cnn(c_in, c1, c2), (2, c_in, hw, hw)
    d_in, h1, h2 = draw(st.integers(16, 64)), draw(st.integers(16, 64)), draw(st.integers(16, 64))
    return mlp(d_in, h1, h2), (draw(st.integers(1, 4)), d_in)


def timing(tmp_path, **kw) -> Timing:
    kw.setdefault("timer", CostModel())
    return Timing(cache=tmp_path / "latency.json", **kw)


def loss(plan) -> float:
    return sum(-math.log(max(p.energy, 1e-300)) for p in plan.layers.values())


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny layers: coarse rank steps
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# The budget


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    model_shape=small_models(),
    budget=st.floats(0.3, 0.95),
    penalty=st.sampled_from([0.0, 1.0]),
    allocation=st.sampled_from(["global", "global-linear"]),
    multiple=st.sampled_from([None, 1, 2]),
)
def test_budget_holds_and_never_worse_than_a_rate(tmp_path, model_shape, budget, penalty, allocation, multiple):
    model, shape = model_shape
    t = Timing(cache=False, timer=CostModel(penalty))
    kw = {"allocation": allocation, "input_shape": shape}
    try:
        plan = quiet(sc.plan_compression, model, latency=budget, rank_multiple=multiple, timing=t, **kw)
    except LatencyUnreachable:
        assume(False)
    lat, table = plan.latency, plan.table
    seconds = table.plan_time(plan.layers)
    assert seconds == pytest.approx(lat["predicted_seconds"], rel=1e-12)
    assert seconds <= budget * table.dense_total * (1 + 1e-9)
    assert lat["fixed_seconds"] + sum(p.time_after for p in plan.layers.values()) == pytest.approx(seconds)
    k = lat["rank_multiple"]
    assert k == (multiple or k) and k in (1, 2, 8, 16)
    objective = loss if allocation == "global" else lambda p: sum(1 - q.energy for q in p.layers.values())
    for rate in [i / 10 for i in range(1, 10)]:
        try:
            by_rate = quiet(sc.plan_compression, model, rate, rank_multiple=k, **kw)
        except sc.RateUnreachable:
            continue
        if table.plan_time(by_rate.layers) <= budget * table.dense_total:
            assert objective(plan) <= objective(by_rate) + 1e-9, rate


def test_compress_record_and_report(tmp_path):
    model, shape = cnn(), (4, 3, 12, 12)
    small = sc.compress(model, latency=0.6, input_shape=shape, timing=timing(tmp_path))
    record = small.sc_compression
    assert record.latency_requested == 0.6 and record.rate_requested is None
    lat = record.details["latency"]
    assert lat["met"] and record.latency_achieved <= 0.6
    assert record.latency_achieved == pytest.approx(lat["table_fraction"])  # the cost model is additive
    assert lat["speedup"] == pytest.approx(1 / record.latency_achieved)
    assert lat["rank_multiple"] == record.options["rank_multiple"]
    prov = lat["table"]
    assert prov["runtime"] == "eager" and prov["timer"] == "cost-model" and prov["torch"] == torch.__version__
    assert prov["cache"] == str(tmp_path / "latency.json") and prov["measured_from"] and prov["threads"] >= 1
    assert "latency budget 0.6" in str(sc.compress_report(model, small, shape)) and "met" in record.summary()
    path = sc.save(small, tmp_path / "small.safetensors")
    assert sc.load(path, model=cnn()).sc_compression == record
    assert torch.allclose(small(torch.zeros(shape)), small(torch.zeros(shape)))  # a working model


def test_missed_budget_is_recorded_and_warned(tmp_path):
    model, shape = cnn(), (4, 3, 12, 12)
    lying = Timing(cache=False, timer=CostModel(extra=1.0))  # the whole compressed model is far slower
    with pytest.warns(UserWarning, match="misses the latency budget 0.6") as caught:
        small = sc.compress(model, latency=0.6, input_shape=shape, timing=lying)
    assert len([w for w in caught if "misses" in str(w.message)]) == 1
    record = small.sc_compression
    assert record.latency_achieved > 0.6 and not record.details["latency"]["met"]
    assert "MISSED" in record.details["latency"]["summary"]


def test_a_table_that_predicts_too_little_is_corrected_end_to_end():
    model, shape = cnn(), (4, 3, 12, 12)
    slower = Timing(cache=False, timer=CostModel(scale=1.2))  # the whole model is 20% slower than its layers' sum
    small = quiet(sc.compress, model, latency=0.6, input_shape=shape, timing=slower)
    lat = small.sc_compression.details["latency"]
    rounds = lat["rounds"]
    assert rounds[0]["table_budget"] == 0.6 and rounds[0]["measured_fraction"] > 0.6  # the table alone misses
    assert lat["met"] and small.sc_compression.latency_achieved <= 0.6 and 1 < len(rounds) <= LATENCY_ROUNDS
    assert lat["table_budget"] < 0.6 and lat["measured_fraction"] == pytest.approx(1.2 * lat["table_fraction"])


@settings(max_examples=8, deadline=None)
@given(model_shape=small_models(), budget=st.floats(0.3, 0.9), scale=st.floats(0.5, 1.5))
def test_the_end_to_end_rounds_keep_the_best_plan_that_meets_the_budget(model_shape, budget, scale):
    model, shape = model_shape
    t = Timing(cache=False, timer=CostModel(scale=scale))
    try:
        small = quiet(sc.compress, model, latency=budget, input_shape=shape, timing=t)
    except LatencyUnreachable as e:
        assert e.reachable > budget
        return
    lat = small.sc_compression.details["latency"]
    rounds = lat["rounds"]
    within = [r for r in rounds if r["measured_fraction"] <= budget]
    assert 1 <= len(rounds) <= LATENCY_ROUNDS
    for r in rounds:  # this timer makes a factorized model exactly `scale` times the table's prediction
        if r["table_fraction"] < 1:
            assert r["measured_fraction"] == pytest.approx(scale * r["table_fraction"], rel=1e-9)
    chosen = [r for r in rounds if r["measured_fraction"] == lat["measured_fraction"]]
    if within:  # the least loss among the plans measured within the budget
        assert lat["met"] and any(r["loss"] == min(w["loss"] for w in within) for r in chosen)
    else:  # none met: the fastest, flagged
        assert not lat["met"] and lat["measured_fraction"] == min(r["measured_fraction"] for r in rounds)


@settings(max_examples=10, deadline=None)
@given(model_shape=small_models(), allocation=st.sampled_from(["global", "global-linear", "uniform"]))
def test_a_budget_beyond_the_table_but_within_reach_end_to_end(model_shape, allocation):
    model, shape = model_shape
    kw = {"input_shape": shape, "allocation": allocation}
    try:
        quiet(sc.plan_compression, model, latency=0.01, timing=Timing(cache=False, timer=CostModel()), **kw)
    except LatencyUnreachable as e:
        floor = e.reachable
    else:
        assume(False)
    assert 0.01 < floor <= 1
    assume(floor < 1)
    fused = Timing(cache=False, timer=CostModel(scale=0.7))  # the whole model runs 30% faster than its layers' sum
    small = quiet(sc.compress, model, latency=0.85 * floor, timing=fused, **kw)
    lat = small.sc_compression.details["latency"]
    assert lat["met"] and lat["rounds"][0]["table_budget"] == pytest.approx(floor)
    with pytest.raises(LatencyUnreachable, match=r"measured end to end.* at least 0\.\d+") as e:
        quiet(sc.compress, model, latency=0.5 * floor, timing=fused, **kw)
    assert e.value.reachable == pytest.approx(0.7 * floor, rel=1e-6) and "\n" not in str(e.value)


class Flaky(CostModel):
    """The cost model, but a whole compressed model's passes alternate: twice as fast (a lucky measurement), then
    10% slower than the cost model."""

    def __init__(self):
        super().__init__(name="flaky")
        self.compressed = 0

    def __call__(self, module, example):
        seconds = super().__call__(module, example)
        if isinstance(module, nn.Sequential) and any(isinstance(m, Factorized) for m in module.modules()):
            self.compressed += 1
            return seconds / 2 if self.compressed % 2 else 1.1 * seconds
        return seconds


def test_the_chosen_plan_is_timed_again_for_the_record():
    model, shape = cnn(), (4, 3, 12, 12)
    flaky = Flaky()
    with pytest.warns(UserWarning, match="misses the latency budget"):
        small = sc.compress(model, latency=0.5, input_shape=shape, timing=Timing(cache=False, timer=flaky))
    lat = small.sc_compression.details["latency"]
    assert lat["rounds"][0]["measured_fraction"] <= 0.5  # the lucky first measurement ended the rounds...
    assert lat["measured_fraction"] == pytest.approx(2.2 * lat["rounds"][0]["measured_fraction"])  # ...not the record
    assert not lat["met"] and small.sc_compression.latency_achieved == lat["measured_fraction"]


def test_with_rate_and_flops_all_budgets_hold(tmp_path):
    model, shape = cnn(), (2, 3, 12, 12)
    small = quiet(sc.compress, model, 0.5, flops=0.6, latency=0.7, input_shape=shape, timing=timing(tmp_path))
    record = small.sc_compression
    assert record.rate_achieved >= 0.5 and record.flops_achieved <= 0.6 and record.latency_achieved <= 0.7


def test_example_input_and_inplace(tmp_path):
    model = mlp()
    x = torch.randn(3, 64)
    small = sc.compress(model, latency=0.5, example=x, timing=timing(tmp_path))
    assert small.sc_compression.details["latency"]["table"]["input"] == "float32[3, 64]"
    same = sc.compress(mlp(), latency=0.5, example=x, timing=timing(tmp_path), inplace=True)
    assert same.sc_compression.details["ranks"] == small.sc_compression.details["ranks"]


def test_rank_multiple_is_chosen_from_the_table(tmp_path):
    model, shape = mlp(128, 128, 128), (8, 128)
    # ranks off the multiples of 8 cost 50x: never faster than dense, so multiple 1 finds nothing better than 8
    aligned = sc.compress(model, latency=0.6, input_shape=shape, timing=Timing(cache=False, timer=CostModel(50.0)))
    lat = aligned.sc_compression.details["latency"]
    assert lat["rank_multiple"] in (8, 16) and aligned.sc_compression.options["rank_multiple"] == lat["rank_multiple"]
    assert all(m.rank % 8 == 0 for m in aligned.modules() if isinstance(m, Factorized))
    cands = lat["rank_multiple_candidates"]
    chosen = cands[str(lat["rank_multiple"])]["loss"]
    assert all(c["loss"] >= chosen - 1e-9 for c in cands.values() if "loss" in c)
    plain = sc.compress(model, latency=0.6, input_shape=shape, timing=Timing(cache=False, timer=CostModel(0.0)))
    cands = plain.sc_compression.details["latency"]["rank_multiple_candidates"]
    assert cands["1"]["loss"] <= cands["8"]["loss"] and plain.sc_compression.details["latency"]["rank_multiple"] == 1


def test_slower_factorizations_stay_dense(tmp_path):
    model, shape = cnn(), (2, 3, 12, 12)
    slow = Timing(cache=False, timer=CostModel(penalty=50.0))  # every rank off the multiples of 8 is slower
    plan = sc.plan_compression(model, latency=0.9, rank_multiple=1, input_shape=shape, timing=slow)
    assert all(p.time_after < p.time_before for p in plan.layers.values() if p.rank is not None)
    with pytest.raises(LatencyUnreachable, match=r"out of reach .* Ask for latency of at least 1\.000"):
        sc.plan_compression(cnn(4, 5, 6), latency=0.9, rank_multiple=1, input_shape=(2, 4, 8, 8), timing=slow)


# ------------------------------------------------------------------------------------------------------------
# The table and its cache


def test_rank_grid_and_interpolation():
    assert rank_grid(0) == [] and rank_grid(1) == [1] and rank_grid(5) == [1, 3, 5]
    grid = rank_grid(115)
    assert grid[0] == 1 and grid[-1] == 115 and {8, 16, 32, 48, 112}.issubset(grid) and 7 in grid
    assert rank_grid(24) == [1, 3, 7, 8, 15, 16, 23, 24] and rank_grid(8) == [1, 3, 7, 8]
    times = LayerTimes(1.0, {"channel": {1: 0.1, 3: 0.3, 7: 0.2, 8: 0.05, 16: 0.5, 15: 0.9}})
    assert times.time("channel", 8) == 0.05 and times.time("channel", 16) == 0.5  # aligned points
    assert times.time("channel", 24) == 0.5  # flat beyond the last point
    assert times.time("channel", 5) == pytest.approx(0.3)  # off the multiples: non-decreasing (7 is lifted to 0.3)
    assert times.time("channel", 11) == pytest.approx(0.3 + 4 / 8 * 0.6)
    assert times.time("channel", 12) == pytest.approx(0.3 + 5 / 8 * 0.6)
    offs = [times.time("channel", r) for r in range(1, 16) if r % 8]
    assert offs == sorted(offs)
    short = LayerTimes(1.0, {"channel": {1: 0.1, 7: 0.2, 8: 0.3, 16: 0.5, 24: 0.9}})
    assert short.time("channel", 20) == pytest.approx(0.7)  # past the last off rank: between the multiples around it


def test_cache_round_trip_and_keys(tmp_path):
    model, shape = cnn(), (2, 3, 12, 12)
    first = CostModel()
    sc.plan_compression(model, latency=0.7, input_shape=shape, timing=timing(tmp_path, timer=first))
    entries = json.loads((tmp_path / "latency.json").read_text())["entries"]
    layer_calls = [c for c in first.calls if c != "Sequential"]
    assert len(entries) == len(layer_calls) > 0
    assert all(k.startswith("runtime=eager|threads=") and "|timer=cost-model|" in k for k in entries)
    again = CostModel()
    plan = sc.plan_compression(model, latency=0.7, input_shape=shape, timing=timing(tmp_path, timer=again))
    assert again.calls == ["Sequential"] and plan.latency["table"]["measured_now"] == 0  # only the whole model
    for changed in (
        {"timing": timing(tmp_path, timer=CostModel(name="other"))},
        {"timing": timing(tmp_path, timer=CostModel(), threads=torch.get_num_threads() + 1)},
        {"input_shape": (3, 3, 12, 12), "timing": timing(tmp_path)},
    ):
        kwargs = {"input_shape": shape, **changed}
        plan = sc.plan_compression(model, latency=0.7, **kwargs)
        assert plan.latency["table"]["measured_now"] > 0, changed
    anonymous = Timing(cache=tmp_path / "anon.json", timer=lambda m, ex: 1e-9 * sc.count_flops(m, example=ex))
    sc.plan_compression(model, latency=0.7, input_shape=shape, timing=anonymous)
    assert not (tmp_path / "anon.json").exists()  # a timer without a name is not cached


def test_cache_file_location_and_damage(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env.json"))
    assert cache_path() == tmp_path / "env.json" and cache_path(tmp_path / "x.json") == tmp_path / "x.json"
    assert cache_path(False) is None
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_path() is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path() == tmp_path / "xdg" / "smoothcompress" / "latency.json"
    (tmp_path / "latency.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        sc.plan_compression(mlp(), latency=0.7, input_shape=(2, 64), timing=timing(tmp_path))
    assert json.loads((tmp_path / "latency.json").read_text())["version"] == 1


# ------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), "0.5", True])
def test_latency_out_of_range(bad):
    with pytest.raises(ConfigError, match="latency must be"):
        check_latency(bad)
    with pytest.raises(ConfigError, match="latency must be"):
        sc.compress(mlp(), latency=bad, input_shape=(2, 64))


def test_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="needs the input to time: pass input_shape") as e:
        sc.compress(mlp(), latency=0.5)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'"):
        sc.compress(mlp(), latency=0.5, input_shape=(2, 64), runtime="tvm")
    with pytest.raises(ConfigError, match="threads must be"):
        Timing(threads=0)
    with pytest.raises(ConfigError, match="timing must be"):
        sc.compress(mlp(), latency=0.5, input_shape=(2, 64), timing={"reps": 3})
    import smoothcompress.extras as extras

    real = extras.import_module

    def no_ort(name):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name)

    monkeypatch.setattr(extras, "import_module", no_ort)
    with pytest.raises(MissingExtra, match=r"pip install 'smoothcompress\[onnx\]'"):
        sc.compress(mlp(), latency=0.5, input_shape=(2, 64), runtime="onnxruntime")


def test_unreachable_names_the_smallest_fraction(tmp_path):
    with pytest.raises(LatencyUnreachable, match=r"latency 0\.01 is out of reach .* at least 0\.\d+") as e:
        sc.compress(cnn(), latency=0.01, input_shape=(2, 3, 12, 12), timing=timing(tmp_path))
    assert isinstance(e.value, sc.RateUnreachable) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------------
# Command line and the real timer


def test_cli_latency(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache.json"))
    torch.manual_seed(0)
    path = sc.save(sc.create_model("cnn", width=8), tmp_path / "model.safetensors")
    assert main(["compress", str(path), "--latency", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "latency must be in (0, 1]" in err and err.count("\n") == 1
    assert main(["compress", str(path), "--runtime", "eager"]) == 2
    assert "pass --latency" in capsys.readouterr().err
    out = tmp_path / "small.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a busy machine may miss the budget: the record says so
        code = main(["compress", str(path), "--latency", "0.95", "--input-shape", "2", "1", "8", "8", "-o", str(out)])
    text = capsys.readouterr()
    if code == 2:  # the real table may find no faster layer on this machine: a one-line error naming the fraction
        assert "Ask for latency of at least" in text.err and text.err.count("\n") == 1
        return
    assert code == 0 and "latency budget 0.95 (eager, input float32[2, 1, 8, 8]" in text.out
    record = sc.load(out).sc_compression
    assert record.latency_requested == 0.95 and record.latency_achieved > 0
    assert (tmp_path / "cache.json").exists()


def test_real_timer_smoke(tmp_path):
    model = mlp(48, 48, 48)
    t = Timing(cache=tmp_path / "real.json", reps=2, warmup=1, threads=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = sc.compress(model, latency=0.9, input_shape=(4, 48), timing=t)
    except LatencyUnreachable as e:  # on a busy machine no layer may measure faster: a valid answer
        assert "Ask for latency of at least" in str(e)
        return
    lat = small.sc_compression.details["latency"]
    assert lat["measured_seconds"] > 0 and lat["measured_dense_seconds"] > 0 and lat["table"]["threads"] == 1
    assert lat["table"]["device"].startswith("cpu")


@pytest.mark.slow
def test_onnxruntime_smoke(tmp_path):
    pytest.importorskip("onnxruntime")
    t = Timing(cache=tmp_path / "ort.json", reps=2, warmup=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = sc.compress(cnn(), latency=0.9, input_shape=(4, 3, 12, 12), runtime="onnxruntime", timing=t)
    except LatencyUnreachable:
        return
    lat = small.sc_compression.details["latency"]
    assert lat["runtime"] == "onnxruntime" and "onnxruntime" in lat["table"]
