"""Sweep files that extend another: tables merged key by key, out and description never inherited, loud errors."""

import os

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothcompress.study.experiment import PRESETS_DIR, SweepConfig, read_sweep_file, resolve_config, sweep
from smoothcompress.study.training import read_toml

BASE = {
    "description": "the base sweep",
    "out": "runs/base",
    "train": {"dataset": "digits", "model": "mlp", "width": 32, "epochs": 2, "batch_size": 64, "device": "cpu"},
    "grid": {"seeds": [0], "regularizers": [{"kind": "none"}, {"kind": "nuclear", "weight": 0.01}]},
    "compress": {"rates": [0.5, 0.8], "methods": [{"method": "svd"}, {"method": "magnitude"}]},
}


def write(path, table):
    path.write_text(tomli_w.dumps(table))
    return path


train_values = st.dictionaries(
    st.sampled_from(["width", "epochs", "batch_size", "lr", "seed_extra"]),
    st.integers(1, 64) | st.floats(0.01, 1.0) | st.text("abc", min_size=1, max_size=3),
    max_size=4,
)


@settings(max_examples=25, deadline=None)
@given(parent_train=train_values, child_train=train_values, child_rates=st.none() | st.lists(st.floats(0.1, 0.9)))
def test_tables_merge_key_by_key_and_other_values_are_replaced(
    tmp_path_factory, parent_train, child_train, child_rates
):
    folder = tmp_path_factory.mktemp("extends")
    write(folder / "base.toml", {**BASE, "train": {**BASE["train"], **parent_train}})
    child = {"extends": "base.toml", "out": "runs/child", "train": child_train}
    if child_rates is not None:
        child["compress"] = {"rates": child_rates}
    merged = read_sweep_file(write(folder / "child.toml", child))
    assert merged["train"] == {**BASE["train"], **parent_train, **child_train}
    assert merged["compress"]["rates"] == (child_rates if child_rates is not None else BASE["compress"]["rates"])
    assert merged["compress"]["methods"] == BASE["compress"]["methods"]  # untouched keys of a merged table stay
    assert merged["grid"] == BASE["grid"]
    assert merged["out"] == "runs/child" and "description" not in merged and "extends" not in merged


def test_a_chain_resolves_from_the_farthest_file_and_lists_are_replaced_whole(tmp_path):
    write(tmp_path / "a.toml", BASE)
    write(tmp_path / "b.toml", {"extends": "a.toml", "out": "runs/b", "train": {"epochs": 3, "width": 16}})
    sub = tmp_path / "sub"
    sub.mkdir()
    c = write(
        sub / "c.toml",
        {"extends": "../b.toml", "out": "runs/c", "train": {"epochs": 4}, "compress": {"methods": [{"method": "svd"}]}},
    )
    merged = read_sweep_file(c)
    assert merged["train"] == {**BASE["train"], "width": 16, "epochs": 4}
    assert merged["compress"] == {"rates": [0.5, 0.8], "methods": [{"method": "svd"}]}
    cfg = SweepConfig.from_toml(c)
    assert [m.name for m in cfg.methods] == ["svd"] and str(cfg.out) == "runs/c"
    assert {s.tag(cfg.train) for s in cfg.runs} == {"mlp-w16-none-s0", "mlp-w16-nuclear0.01-s0"}


def test_a_preset_name_is_found_when_no_file_of_that_name_is_beside(tmp_path):
    child = write(tmp_path / "mine.toml", {"extends": "demo", "out": "runs/mine", "train": {"epochs": 1}})
    demo = read_toml(resolve_config("demo"))
    assert read_sweep_file(child)["train"] == {**demo["train"], "epochs": 1}


def test_from_dict_resolves_extends_from_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path / "base.toml", BASE)
    monkeypatch.chdir(tmp_path)
    cfg = SweepConfig.from_dict({"extends": "base.toml", "out": "runs/x", "train": {"width": 8}})
    assert cfg.train["width"] == 8 and cfg.rates == (0.5, 0.8)


@pytest.mark.parametrize(
    "child, message",
    [
        (
            {"extends": "base.toml", "train": {"epochs": 3}},
            r"child\.toml: a sweep file that extends 'base\.toml' must name its own out",
        ),
        ({"extends": 3, "out": "runs/c"}, r"child\.toml: extends must name a sweep file .*got 3"),
        ({"extends": "", "out": "runs/c"}, r"extends must name a sweep file"),
        ({"extends": "no-such.toml", "out": "runs/c"}, r"child\.toml: extends 'no-such\.toml', but .*no preset"),
        ({"extends": "child.toml", "out": "runs/c"}, r"extends loop: .*child\.toml -> .*child\.toml"),
    ],
)
def test_bad_extends_are_named(tmp_path, child, message):
    write(tmp_path / "base.toml", BASE)
    with pytest.raises(ValueError, match=message):
        SweepConfig.from_toml(write(tmp_path / "child.toml", child))


def test_a_copy_beside_the_file_wins_over_the_preset_of_its_name(tmp_path):
    """Copied presets extend each other, not the built-in ones: a bare name is looked for beside the file first."""
    demo = read_toml(resolve_config("demo"))
    write(tmp_path / "demo.toml", {**demo, "train": {**demo["train"], "lr": 0.05}})
    child = write(tmp_path / "mine.toml", {"extends": "demo", "out": "runs/mine"})
    assert read_sweep_file(child)["train"]["lr"] == 0.05


def test_a_relative_path_is_never_read_from_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path / "base.toml", BASE)  # in the current directory, not beside the extending file
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.toml", {"extends": "base.toml", "out": "runs/c"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"child\.toml: extends 'base\.toml', but there is no file .*sub.base\.toml"):
        read_sweep_file(child)


def test_an_out_given_by_the_caller_stands_in_for_the_file_s_own(tmp_path):
    write(tmp_path / "base.toml", BASE)
    child = write(tmp_path / "child.toml", {"extends": "base.toml", "train": {"epochs": 3}})
    with pytest.raises(ValueError, match="or be run with --out"):
        SweepConfig.from_toml(child)
    assert SweepConfig.from_toml(child, out=tmp_path / "given").out == tmp_path / "given"


def test_a_mistake_inherited_from_the_extended_file_names_the_chain(tmp_path):
    write(tmp_path / "base.toml", {**BASE, "compress": {"rates": [1.5]}})
    child = write(tmp_path / "child.toml", {"extends": "base.toml", "out": "runs/c"})
    with pytest.raises(ValueError, match=r"child\.toml or a file it extends: compress\.rates must lie in \(0, 1\)"):
        SweepConfig.from_toml(child)


def test_a_loop_through_two_files_is_named(tmp_path):
    write(tmp_path / "a.toml", {"extends": "b.toml", "out": "runs/a"})
    write(tmp_path / "b.toml", {"extends": "a.toml", "out": "runs/b"})
    with pytest.raises(ValueError, match=r"extends loop: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        read_sweep_file(tmp_path / "a.toml")


PRESET_FINGERPRINTS = {
    "cifar10-cpu": "8b4eb92f00566c7e",
    "cifar10-cpu-lowrank": "bbe3aa0610a6af73",
    "cifar10-cpu-small": "9e34fa433ac9ac12",
    "cifar10-paper": "154780299e7ce1f5",
    "cifar10-paper-cpu": "8ae41035a70d8c03",
    "cifar10-paper-cpu-30ep": "062dd55c2ff4d8e1",
    "cifar10-paper-small": "e20b321af5182cbf",
}
"""The fingerprints of the presets that extend another and of those they extend, as their committed results and
running sweeps carry them: an edit to a parent preset that would change what a child runs fails here, before a
resumed shard is refused or a report refuses to merge."""


@pytest.mark.parametrize("name", sorted(PRESET_FINGERPRINTS))
def test_presets_of_a_chain_keep_their_fingerprints(name):
    assert SweepConfig.from_toml(name).fingerprint() == PRESET_FINGERPRINTS[name]


def test_every_preset_of_a_chain_is_pinned():
    chained = {p.stem for p in PRESETS_DIR.glob("*.toml") if "extends" in read_toml(p)}
    parents = {read_toml(resolve_config(n))["extends"] for n in chained}
    assert chained | parents <= set(PRESET_FINGERPRINTS)


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.toml") if "extends" in read_toml(p)))
def test_an_extending_preset_parses_like_its_merged_table_written_out(name, tmp_path):
    """Every preset that extends another is the sweep of its merged table: same runs, methods and fingerprint."""
    merged = read_sweep_file(resolve_config(name))
    flat = SweepConfig.from_toml(write(tmp_path / f"{name}.toml", merged))
    cfg = SweepConfig.from_toml(name)
    assert cfg.fingerprint() == flat.fingerprint() and cfg.runs == flat.runs and cfg.out == flat.out
    assert os.path.basename(str(cfg.out)) == name  # never the folder of the preset it extends


def test_the_sweep_folder_keeps_the_merged_table_it_ran(tmp_path):
    tiny = {**BASE, "grid": {"regularizers": [{"kind": "none"}]}, "compress": {"rates": [0.5], "methods": []}}
    write(tmp_path / "base.toml", tiny)
    child = write(tmp_path / "child.toml", {"extends": "base.toml", "out": "unused", "train": {"epochs": 1}})
    sweep(child, out=tmp_path / "out")
    kept = tmp_path / "out" / "sweep.toml"
    fingerprint = SweepConfig.from_toml(child).fingerprint()
    assert kept.read_text().startswith(f"# the sweep this folder holds, as last run; fingerprint {fingerprint}\n")
    table = read_toml(kept)
    assert "extends" not in table and "description" not in table  # the child has none, and it is not inherited
    assert table["train"] == {**BASE["train"], "epochs": 1} and table["out"] == str(tmp_path / "out")
    assert SweepConfig.from_toml(kept).fingerprint() == fingerprint


def test_a_refused_sweep_leaves_the_kept_table_alone(tmp_path):
    tiny = {**BASE, "grid": {"regularizers": [{"kind": "none"}]}, "compress": {"rates": [0.5], "methods": []}}
    sweep(SweepConfig.from_dict({**tiny, "train": {**tiny["train"], "epochs": 1}}, out=tmp_path))
    before = (tmp_path / "sweep.toml").read_bytes()
    with pytest.raises(ValueError, match="different settings"):
        sweep(SweepConfig.from_dict({**tiny, "train": {**tiny["train"], "epochs": 1, "lr": 0.5}}, out=tmp_path))
    assert (tmp_path / "sweep.toml").read_bytes() == before


def test_the_kept_table_leaves_out_what_toml_cannot_hold_and_never_a_changed_config(tmp_path):
    from dataclasses import replace

    tiny = {**BASE, "grid": {"regularizers": [{"kind": "none"}]}, "compress": {"rates": [0.5], "methods": []}}
    cfg = SweepConfig.from_dict({**tiny, "train": {**tiny["train"], "epochs": 1, "width": None}}, out=tmp_path / "a")
    sweep(cfg)
    assert "width" not in read_toml(tmp_path / "a" / "sweep.toml")["train"]  # None: the automatic width
    changed = replace(
        SweepConfig.from_dict(tiny, out=tmp_path / "b"), rates=(0.7,), train={**tiny["train"], "epochs": 1}
    )
    with pytest.warns(UserWarning, match="sweep.toml not written: the config was changed after it was parsed"):
        sweep(changed)
    assert not (tmp_path / "b" / "sweep.toml").exists()
