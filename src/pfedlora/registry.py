"""The algorithm registry: name -> (settings model, config section, algorithm).

An algorithm module registers itself when it is imported::

    class FDSettings(AlgorithmSettings):
        gamma: float = Field(default=1.0, ge=0)

    ALGORITHM = register(Algorithm(name="fd", ...), settings=FDSettings)

Built-in algorithms are found through :data:`BUILTIN_MODULES` (module paths as strings, so importing
this module imports no algorithm); third-party ones through the entry-point group
``pfedlora.algorithms`` (``importlib.metadata``): a package declaring

.. code-block:: toml

    [project.entry-points."pfedlora.algorithms"]
    my_method = "my_package.my_method"

makes ``algorithm: my_method`` work everywhere once it is installed. The entry point names a module
that calls :func:`register` with the same name (or an object such a module defines). Its settings
are the config section named after it. A plugin may not take a built-in's name.

This module sits below ``config``: the config validates the chosen algorithm's section through
:func:`settings_sections` and :func:`check_config` without naming an algorithm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pfedlora.errors import UserError

ENTRY_POINT_GROUP = "pfedlora.algorithms"

# name -> module; the module registers the name on import
BUILTIN_MODULES: dict[str, str] = {
    "pfedlora": "pfedlora.algorithms.pfedlora",
    "standalone": "pfedlora.algorithms.standalone",
    "lg_fedavg": "pfedlora.algorithms.lg_fedavg",
    "fd": "pfedlora.algorithms.fd",
    "fedproto": "pfedlora.algorithms.fedproto",
    "fml": "pfedlora.algorithms.fml",
    "fedkd": "pfedlora.algorithms.fedkd",
    "fedgh": "pfedlora.algorithms.fedgh",
    "fedavg": "pfedlora.algorithms.fedavg",
    "fedmrl": "pfedlora.algorithms.fedmrl",
    "fedgen": "pfedlora.algorithms.fedgen",
    "fedtgp": "pfedlora.algorithms.fedtgp",
    "fedl2g": "pfedlora.algorithms.fedl2g",
}


class AlgorithmSettings(BaseModel):
    """Base of every algorithm's settings: unknown keys are refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # keys whose default changed after runs were written without them: the value such a written
    # config meant (see :func:`with_former_defaults`). A new key keeps the earlier behaviour as its
    # default; where a default later changes, the former one is recorded here.
    former_defaults: ClassVar[dict[str, Any]] = {}


def with_former_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """A written run config (``config.yaml`` of a finished run) with the keys it lacks filled in from
    each section's ``former_defaults``: read with today's defaults instead, a run written before a
    default changed would pass for a run made under the new one."""
    filled = dict(document)
    for registration in builtins():
        former = getattr(registration.settings, "former_defaults", None)
        section = filled.get(registration.section) if registration.section else None
        if former and isinstance(section, dict):
            filled[registration.section] = {**former, **section}
    return filled


@dataclass(frozen=True)
class Registration:
    name: str
    algorithm: Any  # a pfedlora.algorithms.base.Algorithm (that layer sits above this one)
    settings: type[BaseModel] | None
    # the config key of the settings; the name unless a built-in kept an older key (pfedlora: adapter)
    section: str | None
    # configs written before algorithms owned their settings carried these sections for every
    # algorithm; they stay in every written config so finished runs keep their config hash
    always_written: bool
    # cross-section rules (e.g. "one architecture for every client"): raise ValueError, one line
    check_config: Callable[[Any], None] | None
    source: str  # "pfedlora" for built-ins, else the distribution that provides it


_registered: dict[str, Registration] = {}
_loading_source: list[str] = []  # the source of the module being imported (built-in or a plugin)


def register(algorithm: Any, *, settings: type[BaseModel] | None = None, section: str | None = None,
             always_written: bool = False, check_config: Callable[[Any], None] | None = None) -> Any:
    """Register ``algorithm`` (anything with a ``name``) with its settings model; returns ``algorithm``.

    ``section`` defaults to the algorithm's name. ``check_config(config)`` runs when a config
    choosing this algorithm is validated: it raises ``ValueError`` (one line) for settings of other
    sections this algorithm cannot work with.
    """
    name = algorithm.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"algorithm name {name!r} must be a Python identifier (it is a config key)")
    source = _loading_source[-1] if _loading_source else _source_of_caller(name)
    if source != "pfedlora" and name in BUILTIN_MODULES:
        raise UserError(f"algorithm plugin {name!r} from {source} clashes with the built-in algorithm {name!r}; "
                        "rename the plugin's algorithm")
    existing = _registered.get(name)
    if existing is not None and existing.algorithm is not algorithm and existing.source != source:
        raise UserError(f"algorithm {name!r} is registered twice ({existing.source} and {source}); "
                        "uninstall one of them")
    if section is None and settings is not None:
        section = name
    _registered[name] = Registration(name, algorithm, settings, section, always_written, check_config, source)
    return algorithm


def _source_of_caller(name: str) -> str:
    """A module imported directly (not through this registry): built-in if it is one of ours."""
    return "pfedlora" if name in BUILTIN_MODULES else "a module imported directly"


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, tuple[metadata.EntryPoint, ...]]:
    found: dict[str, list[metadata.EntryPoint]] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, []).append(entry)
    return {name: tuple(entries) for name, entries in found.items()}


def refresh() -> None:
    """Look for installed plugins again (after installing one into a running process)."""
    _entry_points.cache_clear()


def _plugin_source(entry: metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"the package {dist.name}" if dist is not None else f"the entry point {entry.value}"


def names(*, imported: bool = True) -> list[str]:
    """Every algorithm name: the built-ins in their order, then installed plugins, then (``imported``)
    any other module that registered itself when imported directly (e.g. by a test). ``compare
    --algorithms all`` means the installed ones (``imported=False``)."""
    plugins = [name for name in _entry_points() if name not in BUILTIN_MODULES]
    others = [name for name in _registered if name not in BUILTIN_MODULES and name not in plugins] if imported else []
    return [*BUILTIN_MODULES, *plugins, *others]


def forget(name: str) -> None:
    """Drop a plugin's registration (tests that register one and clean up after themselves)."""
    if name not in BUILTIN_MODULES:
        _registered.pop(name, None)


def get(name: str) -> Registration:
    """The registration of ``name``, importing its module on first use; UserError when unknown."""
    entries = _entry_points().get(name, ())
    if name in BUILTIN_MODULES and entries:
        raise UserError(f"algorithm plugin {name!r} from {_plugin_source(entries[0])} clashes with the built-in "
                        f"algorithm {name!r}; rename the plugin's algorithm or uninstall it")
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_MODULES:
        _import(BUILTIN_MODULES[name], "pfedlora")
    elif not entries:
        raise UserError(f"unknown algorithm {name!r}; valid: {', '.join(names())}")
    elif len(entries) > 1:
        raise UserError(f"algorithm {name!r} is provided by {len(entries)} packages "
                        f"({', '.join(_plugin_source(e) for e in entries)}); uninstall all but one")
    else:
        _load_entry_point(entries[0])
    if name not in _registered:
        raise UserError(f"algorithm {name!r}: its module did not call pfedlora.registry.register with that name")
    return _registered[name]


def _import(module: str, source: str) -> None:
    _loading_source.append(source)
    try:
        importlib.import_module(module)
    finally:
        _loading_source.pop()


def _load_entry_point(entry: metadata.EntryPoint) -> None:
    source = _plugin_source(entry)
    _loading_source.append(source)
    try:
        entry.load()
    except UserError:
        raise
    except Exception as exc:  # a broken plugin: say which, in one line
        raise UserError(f"algorithm plugin {entry.name!r} ({entry.value}) cannot be loaded: "
                        f"{type(exc).__name__}: {exc}") from None
    finally:
        _loading_source.pop()
    registered = _registered.get(entry.name)
    if registered is None:
        raise UserError(f"algorithm plugin {entry.name!r} ({entry.value}) did not register an algorithm named "
                        f"{entry.name!r} (pfedlora.registry.register)")


def get_algorithm(name: str) -> Any:
    return get(name).algorithm


def builtins() -> list[Registration]:
    return [get(name) for name in BUILTIN_MODULES]


def settings_sections(algorithm: str, given: list[str]) -> dict[str, type[BaseModel]]:
    """The settings sections a config choosing ``algorithm`` validates: those always written, the
    chosen algorithm's, and any other algorithm's section the document gives (``given``: its keys;
    with ``given`` empty: the sections the config carries and writes).

    Keys of ``given`` that are no algorithm's section are left out (the caller reports them).
    """
    sections: dict[str, type[BaseModel]] = {}
    for registration in builtins():
        if registration.settings is not None and registration.always_written:
            sections[registration.section] = registration.settings
    chosen = get(algorithm)
    if chosen.settings is not None:
        sections[chosen.section] = chosen.settings
    if any(key not in sections for key in given):
        by_section = section_owners()
        for key in given:
            if key not in sections and key in by_section:
                owner = get(by_section[key])
                sections[key] = owner.settings
    return sections


def section_owners() -> dict[str, str]:
    """Config section -> algorithm name, for built-ins and installed plugins (plugins are imported)."""
    owners = {}
    for name in names():
        try:
            registration = get(name)
        except UserError:
            continue  # a broken plugin is reported when it is chosen
        if registration.section is not None:
            owners[registration.section] = name
    return owners


def check_config(config: Any) -> None:
    """The chosen algorithm's cross-section rules (ValueError, one line)."""
    registration = get(config.algorithm)
    if registration.check_config is not None:
        registration.check_config(config)
