"""Import hygiene: ``import smoothcompress`` loads torch and the core only; every public name resolves."""

import pkgutil
import subprocess
import sys

import pytest

import smoothcompress as sc


def _fresh(code: str) -> list[str]:
    """Words printed by ``code`` in a fresh interpreter (this one has long imported everything)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_import_loads_neither_matplotlib_nor_torch_pruning():
    code = "import smoothcompress, sys; print('matplotlib' in sys.modules, 'torch_pruning' in sys.modules)"
    assert _fresh(code) == ["False", "False"]


def test_pipeline_modules_load_on_first_use():
    lazy = (
        "smoothcompress.study.training",
        "smoothcompress.study.data",
        "smoothcompress.study.experiment",
        "smoothcompress.study.report",
    )
    code = (
        f"import smoothcompress as sc, sys; lazy = {lazy!r}; print(*(m in sys.modules for m in lazy)); "
        "sc.prune; print('torch_pruning' in sys.modules); sc.write_report; print('matplotlib' in sys.modules)"
    )
    # torch_pruning loads only when filter pruning runs (magnitude pruning does not need it)
    assert _fresh(code) == ["False"] * 4 + ["False", "True"]


@pytest.mark.parametrize("name", sc.__all__)
def test_every_public_name_resolves(name):
    assert getattr(sc, name) is not None


def test_dir_lists_the_lazy_names_too():
    assert set(sc.__all__) <= set(dir(sc))
    assert {"prune", "sweep", "write_report", "TrainConfig", "study", "pruning"} <= set(dir(sc))


def test_lazy_names_are_the_modules_own_objects():
    from smoothcompress import pruning
    from smoothcompress.study import experiment, training

    assert sc.prune is pruning.prune and sc.sweep is experiment.sweep and sc.train is training.train
    assert sc.study.training is training


def test_no_public_name_is_also_a_module_name():
    """A function named like a submodule is replaced by the module once the submodule is imported."""
    modules = {m.name for m in pkgutil.iter_modules(sc.__path__)}
    assert {"pruning", "study", "methods", "io"} <= modules
    assert not modules & set(sc.__all__)
    study = {m.name for m in pkgutil.iter_modules(sc.study.__path__)}
    assert {"data", "training", "experiment", "report"} <= study
    assert not study & set(sc.__all__)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        sc.nope  # noqa: B018
