"""Which layers of a model an operation touches: one meaning of ``include`` / ``exclude`` for every caller.

:class:`smoothcompress.Smoothness`, :func:`smoothcompress.compress`, :func:`smoothcompress.prune` and the
command line's ``--exclude`` all select layers through :func:`select_layers`.

An entry of ``include`` or ``exclude`` is one of

* a dotted module name, e.g. ``"fc"`` or ``"layers.0.1.conv2"``;
* an ``fnmatch`` pattern on dotted names, e.g. ``"layers.2.*"`` or ``"*shortcut*"``;
* a container: a name or pattern that matches a module holding layers (``"layers.0"``) stands for every layer
  inside it;
* a module class, e.g. ``nn.Linear``: every layer that is an instance of it, or lies inside an instance of it;
* ``"<first>"`` or ``"<last>"``: the first or last eligible layer in module order (usually the stem and the
  classifier).

An entry that matches no layer in scope raises ``ValueError``. Models wrapped in ``DataParallel``,
``DistributedDataParallel`` or ``torch.compile`` are looked through (:func:`unwrap`); names are those of the
wrapped model.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from smoothcompress.errors import ConfigError

__all__ = ["ENTRY_HELP", "Selection", "select_layers", "unwrap", "set_submodule", "as_entries", "entry_label"]

ENTRY_HELP = (
    "a dotted layer name, an fnmatch pattern ('layers.2.*'), a container name (every layer inside it), "
    "'<first>' or '<last>'"
)
"""What an include/exclude entry may be, for help texts (module classes are only possible from Python)."""

SPECIAL = ("<first>", "<last>")

Entry = str | type
Entries = Entry | Iterable[Entry] | None
Scope = tuple[type, ...] | Callable[[str, nn.Module], bool]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DataParallel`` / ``DistributedDataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, however deeply nested; ``model`` itself when it is not wrapped."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` of ``root`` by ``new``.

    Raises
    ------
    ValueError
        ``name`` is empty (the root cannot replace itself).
    AttributeError
        The parent of ``name`` does not exist in ``root``.
    """
    if not name:
        raise ValueError("set_submodule needs a dotted submodule name, not the root ''")
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def as_entries(spec: Entries, what: str = "exclude") -> tuple[Entry, ...]:
    """``spec`` as a tuple of entries: a single str or class becomes a 1-tuple, ``None`` an empty one.

    Raises
    ------
    ValueError
        An entry is neither a str nor an ``nn.Module`` subclass.
    """
    if spec is None:
        return ()
    items = (spec,) if isinstance(spec, (str, type)) else tuple(spec) if isinstance(spec, Iterable) else (spec,)
    for item in items:
        if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module))):
            raise ConfigError(
                f"{what} entries must be module name patterns (str: {ENTRY_HELP}) or nn.Module subclasses, got {item!r}"
            )
    return items


def entry_label(entry: Entry) -> str:
    """How an entry is printed: the string itself, or the class name."""
    return entry if isinstance(entry, str) else entry.__name__


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_layers`.

    Attributes
    ----------
    root : nn.Module
        The unwrapped model; every name below is a dotted name in it.
    chosen : dict of str to nn.Module
        The selected layers, in module order.
    skipped : dict of str to str
        Every other layer in scope, in module order, with the reason, e.g. ``"excluded by layers.0"``,
        ``"not included"`` or a caller's reason such as ``"grouped conv (groups=4)"``.
    """

    root: nn.Module
    chosen: dict[str, nn.Module] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"chosen ({len(self.chosen)}): " + (", ".join(self.chosen) or "none")]
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _in_scope(scope: Scope) -> Callable[[str, nn.Module], bool]:
    if isinstance(scope, tuple):
        return lambda name, module: isinstance(module, scope)
    return scope


def _hits(entry: Entry, name: str, chain: list[tuple[str, nn.Module]], first: str | None, last: str | None) -> bool:
    """Whether ``entry`` selects the layer ``name``; ``chain`` is the layer and its non-root ancestors."""
    if isinstance(entry, type):
        return any(isinstance(m, entry) for _, m in chain)
    if entry in SPECIAL:
        return name == (first if entry == "<first>" else last)
    return any(fnmatch.fnmatchcase(n, entry) for n, _ in chain)


def _no_match(what: str, entry: Entry, root: nn.Module, layers: list[str]) -> ConfigError:
    label = entry_label(entry)
    if isinstance(entry, type):
        names = set(layers)
        kinds = sorted({type(m).__name__ for n, m in root.named_modules() if n in names})
        hint = f"layer types present: {', '.join(kinds) or 'none'}"
    elif entry in SPECIAL:
        hint = "the model has no eligible layer"
    else:
        containers = {n.rpartition(".")[0] for n in layers} - {""}
        close = difflib.get_close_matches(entry, [*layers, *sorted(containers)], n=3, cutoff=0.6)
        shown = close or layers[:8]
        more = ", ..." if not close and len(layers) > 8 else ""
        hint = ("did you mean " if close else "layers: ") + ", ".join(map(repr, shown)) + more
    return ConfigError(f"{what} entry {label!r} matches no layer of {type(root).__name__}; {hint}")


def select_layers(
    model: nn.Module,
    include: Entries = None,
    exclude: Entries = (),
    *,
    types: Scope = (nn.Conv2d, nn.Linear),
    ineligible: Callable[[str, nn.Module], str | None] | None = None,
) -> Selection:
    """Select the layers of ``model`` that ``include`` and ``exclude`` leave (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The model; wrappers are looked through (:func:`unwrap`). Not modified.
    include : entry or iterable of entries, optional
        Keep only layers matched by one entry. ``None`` (default): every eligible layer.
    exclude : entry or iterable of entries
        Leave out layers matched by one entry; exclusion wins over eligibility and ``include``.
    types : tuple of classes, or callable ``(name, module) -> bool``
        Which modules are layers at all (the scope): instances of these classes, or those the predicate accepts.
        Entries are matched against these layers only.
    ineligible : callable ``(name, module) -> str or None``, optional
        The caller's reason why a layer in scope cannot be chosen, or ``None`` when it can.

    Returns
    -------
    Selection
        Chosen layers and, for every other layer in scope, the reason: ``"excluded by <entry>"`` (the first
        matching entry), the ``ineligible`` reason, or ``"not included"``.

    Raises
    ------
    ValueError
        An entry that is not a str or ``nn.Module`` subclass, or an entry that matches no layer in scope (the
        one-line message names close candidates).
    """
    include_entries = as_entries(include, "include")
    exclude_entries = as_entries(exclude, "exclude")
    root = unwrap(model)
    in_scope = _in_scope(types)
    named = dict(root.named_modules())
    layers = [name for name, m in named.items() if in_scope(name, m)]
    why_not = {name: ineligible(name, named[name]) if ineligible else None for name in layers}
    eligible = [name for name in layers if why_not[name] is None]
    first, last = (eligible[0], eligible[-1]) if eligible else (None, None)

    def chain(name: str) -> list[tuple[str, nn.Module]]:
        parts = name.split(".") if name else []
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
        return [(name, named[name]), *((p, named[p]) for p in prefixes)]

    chains = {name: chain(name) for name in layers} if include_entries or exclude_entries else {}
    for what, entries in (("include", include_entries), ("exclude", exclude_entries)):
        for entry in entries:
            if not any(_hits(entry, name, chains[name], first, last) for name in layers):
                raise _no_match(what, entry, root, layers)
    chosen, skipped = {}, {}
    for name in layers:
        hit = next((e for e in exclude_entries if _hits(e, name, chains[name], first, last)), None)
        if hit is not None:
            skipped[name] = f"excluded by {entry_label(hit)}"
        elif why_not[name] is not None:
            skipped[name] = why_not[name]
        elif include_entries and not any(_hits(e, name, chains[name], first, last) for e in include_entries):
            skipped[name] = "not included"
        else:
            chosen[name] = named[name]
    return Selection(root, chosen, skipped)
