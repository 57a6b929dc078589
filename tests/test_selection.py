"""Layer selection: one meaning of include/exclude for Smoothness, compress, prune; unwrap; set_submodule."""

import fnmatch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.selection import Selection, as_entries, select_layers, set_submodule, unwrap

# ---------------------------------------------------------------------------------------------------------
# Random nested models: containers (Sequential, ModuleDict) holding Conv2d / Linear / ReLU leaves


@st.composite
def trees(draw, depth=0):
    """A module tree: a leaf layer, or a container of 1-3 subtrees (leaves only at depth 3)."""
    if depth >= 3 or draw(st.booleans()) and depth > 0:
        kind = draw(st.sampled_from(["linear", "conv", "relu"]))
        if kind == "linear":
            return nn.Linear(draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        if kind == "conv":
            return nn.Conv2d(draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])))
        return nn.ReLU()
    children = draw(st.lists(trees(depth + 1), min_size=1, max_size=3))
    if draw(st.booleans()):
        return nn.Sequential(*children)
    keys = draw(st.lists(st.sampled_from(["a", "b", "head", "block", "x1"]), min_size=len(children),
                         max_size=len(children), unique=True))  # fmt: skip
    return nn.ModuleDict(dict(zip(keys, children, strict=True)))


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def containers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and len(list(m.children()))]


@settings(max_examples=60, deadline=None)
@given(model=trees(), data=st.data())
def test_container_entry_selects_every_layer_inside(model, data):
    layers = layer_names(model)
    candidates = [c for c in containers(model) if any(n.startswith(c + ".") for n in layers)]
    if not candidates:
        return
    box = data.draw(st.sampled_from(candidates))
    sel = select_layers(model, exclude=[box])
    inside = [n for n in layers if n.startswith(box + ".")]
    assert [n for n, why in sel.skipped.items() if why == f"excluded by {box}"] == inside
    assert list(sel.chosen) == [n for n in layers if n not in inside]
    # include is the complement: the same container chosen alone
    assert list(select_layers(model, include=box).chosen) == inside


@settings(max_examples=60, deadline=None)
@given(model=trees(), data=st.data())
def test_names_and_globs_match_like_fnmatch_on_the_layer_or_an_ancestor(model, data):
    layers = layer_names(model)
    if not layers:
        return
    name = data.draw(st.sampled_from(layers))
    pattern = data.draw(st.sampled_from([name, name.rsplit(".", 1)[0] + ".*" if "." in name else "*", "*" + name[-1:]]))

    def hit(n: str) -> bool:
        parts = n.split(".")
        return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))

    sel = select_layers(model, exclude=pattern)
    assert set(sel.skipped) == {n for n in layers if hit(n)}
    assert set(sel.chosen) == {n for n in layers if not hit(n)}
    assert list(sel.chosen) + list(sel.skipped) != [] and name in sel.skipped


@settings(max_examples=40, deadline=None)
@given(model=trees())
def test_first_last_and_types(model):
    layers = layer_names(model)
    if not layers:
        return
    sel = select_layers(model, exclude=("<first>", "<last>"))
    assert list(sel.chosen) == layers[1:-1]
    assert sel.skipped[layers[0]] == "excluded by <first>"
    linears = [n for n in layers if isinstance(model.get_submodule(n), nn.Linear)]
    if linears:
        assert list(select_layers(model, include=nn.Linear).chosen) == linears
    else:
        with pytest.raises(ValueError, match="include entry 'Linear' matches no layer"):
            select_layers(model, include=nn.Linear)


def test_type_entry_of_a_container_selects_the_layers_inside():
    model = sc.create_model("resnet20", width=4)
    sel = select_layers(model, exclude=nn.Sequential)  # every block is a Sequential inside the ModuleList
    assert list(sel.chosen) == ["conv1", "fc"]
    assert sel.skipped["layers.1.0.shortcut.0"] == "excluded by Sequential"


def test_ineligible_layers_are_skipped_with_the_reason_and_do_not_count_for_first():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3), nn.Linear(4, 2))

    def grouped(name, m):
        return "grouped conv" if getattr(m, "groups", 1) > 1 else None

    sel = select_layers(model, exclude="<first>", ineligible=grouped)
    assert sel.skipped == {"0": "grouped conv", "1": "excluded by <first>"}
    assert list(sel.chosen) == ["2"]
    assert "skipped 0: grouped conv" in str(sel)
    # exclusion wins over ineligibility in the reason
    assert select_layers(model, exclude="0", ineligible=grouped).skipped["0"] == "excluded by 0"


def test_first_matching_entry_is_the_reason_and_include_misses_are_reported():
    model = sc.create_model("resnet20", width=4)
    sel = select_layers(model, include="layers.1", exclude=["*shortcut*", "layers.1.0"])
    assert sel.skipped["layers.1.0.shortcut.0"] == "excluded by *shortcut*"
    assert sel.skipped["layers.1.0.conv1"] == "excluded by layers.1.0"
    assert sel.skipped["fc"] == "not included"
    assert list(sel.chosen) == [f"layers.1.{i}.conv{j}" for i in (1, 2) for j in (1, 2)]


def test_entry_that_matches_nothing_raises_one_line_with_close_candidates():
    model = sc.create_model("resnet20", width=4)
    with pytest.raises(ValueError) as err:
        select_layers(model, exclude=["layers.0.0.conv3"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("exclude entry 'layers.0.0.conv3' matches no layer of")
    assert "did you mean 'layers.0.0.conv2', 'layers.0.0.conv1'" in msg
    with pytest.raises(ValueError, match="include entry 'BatchNorm2d' matches no layer .* layer types present: "):
        select_layers(model, include=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="matches no layer .* no eligible layer"):
        select_layers(model, exclude="<last>", ineligible=lambda n, m: "never")
    with pytest.raises(ValueError, match="module name patterns .* got 3"):
        select_layers(model, exclude=[3])
    with pytest.raises(ValueError, match="include entries"):
        select_layers(model, include=[int])


def test_as_entries_normalises():
    assert as_entries(None) == ()
    assert as_entries("fc") == ("fc",)
    assert as_entries(nn.Linear) == (nn.Linear,)
    assert as_entries(["a", nn.Conv2d]) == ("a", nn.Conv2d)


def test_empty_selection_is_not_an_error():
    sel = select_layers(nn.Sequential(nn.ReLU()))
    assert sel == Selection(sel.root, {}, {})


# ---------------------------------------------------------------------------------------------------------
# Wrappers and set_submodule


def test_unwrap_looks_through_data_parallel_and_compile():
    model = sc.create_model("resnet20", width=4)
    compiled = torch.compile(model)  # compiles lazily: wrapping alone is cheap
    assert unwrap(nn.DataParallel(compiled)) is model
    assert unwrap(model) is model
    sel = select_layers(nn.DataParallel(model), include="fc")
    assert sel.root is model and list(sel.chosen) == ["fc"]


def test_set_submodule_replaces_and_reports_bad_paths():
    model = sc.create_model("resnet20", width=4)
    new = nn.Identity()
    set_submodule(model, "layers.1.0.shortcut.0", new)
    assert model.get_submodule("layers.1.0.shortcut.0") is new
    set_submodule(model, "fc", nn.Linear(16, 3))
    assert model.fc.out_features == 3
    with pytest.raises(AttributeError):
        set_submodule(model, "nothing.here", nn.Identity())
    with pytest.raises(ValueError, match="root"):
        set_submodule(model, "", nn.Identity())


# ---------------------------------------------------------------------------------------------------------
# The three callers agree


@pytest.mark.parametrize(
    "exclude",
    [
        ["layers.0"],  # a container
        ["<first>", "<last>", "*shortcut*"],
        ["layers.2.*", nn.Linear],
        ["layers.1.0", "conv1"],
    ],
)
def test_smoothness_compress_and_prune_agree_on_exclude(exclude):
    model = sc.create_model("resnet20", width=4)
    everything = layer_names(model)
    expected = list(select_layers(model, exclude=exclude).chosen)
    assert 0 < len(expected) < len(everything)

    penalised = list(sc.Smoothness("first", 1e-3, exclude=exclude).layers(model))

    plan = sc.plan_compression(model, 0.05, exclude=exclude)
    planned = list(plan.layers)
    assert all(plan.notes[n].startswith("skipped: excluded by ") for n in everything if n not in planned)

    pruned = sc.prune(model, 0.1, method="magnitude-layerwise", exclude=exclude)
    touched = [n for n in everything if bool((pruned.get_submodule(n).weight == 0).any())]

    assert penalised == planned == touched == expected


def test_callers_reject_an_entry_that_matches_nothing_alike():
    model = sc.create_model("resnet20", width=4)
    for call in (
        lambda: sc.Smoothness("first", 1e-3, exclude="layers.9").layers(model),
        lambda: sc.compress(model, 0.3, exclude=["layers.9"]),
        lambda: sc.prune(model, 0.3, exclude=["layers.9"]),
    ):
        with pytest.raises(ValueError, match="exclude entry 'layers.9' matches no layer of ResNet; did you mean"):
            call()
