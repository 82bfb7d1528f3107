"""String-keyed registries: datasets, methods, metrics and feature extractors are each one file, one name.

Names become folder and cache-file names, so they are validated: lower-case letters, digits, `-` and `_`.
An unknown name fails with the list of valid ones.

A registry knows its built-ins by name, target (`module:Class`) and description without importing them
(`register_lazy`), so `taxabench list` and config validation do not pay for torch; a class is imported when it is
first asked for (`get`). Third-party packages add entries through an entry-point group (e.g. `taxabench.methods`),
read the first time the registry is asked anything; `entries()` says where each name came from.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from taxabench.errors import TaxabenchError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_+-]*$")
BUILT_IN = "built-in"


@dataclass(frozen=True)
class Entry:
    """One registered name as `taxabench list` shows it: known without importing the implementation when lazy."""

    name: str
    target: str  # "module:Class"
    description: str
    origin: str = BUILT_IN  # "built-in", or the distribution whose entry point registered it
    attributes: dict[str, Any] = field(default_factory=dict)  # class attributes `list` shows (methods: unseen species)


class Registry(Generic[T]):
    """Names -> classes. `base` may be given as "module:Class", so building the registry imports nothing heavy.

    Args:
        kind: what an entry is, in messages ("method").
        base: the class every entry must subclass, or its "module:Class".
        group: entry-point group plug-ins register under (e.g. "taxabench.methods"); None: no plug-ins.
        on_load: called with (name, cls) when a class is first imported (e.g. to check or set its name).
        listed: class attributes `entries()` reports besides the description (methods: unseen species).
    """

    def __init__(self, kind: str, base: type | str, group: str | None = None,
                 on_load: Callable[[str, type], None] | None = None, listed: tuple[str, ...] = ()):
        self.kind = kind
        self._base = base
        self.group = group
        self._on_load = on_load
        self.listed = listed
        self._entries: dict[str, type[T]] = {}  # imported
        self._lazy: dict[str, Entry] = {}  # known by target only, imported on first `get`
        self._origins: dict[str, str] = {}
        self._plugins_read = group is None

    @property
    def base(self) -> type:
        if isinstance(self._base, str):
            self._base = _import(self._base)
        return self._base

    # registration ------------------------------------------------------------------------------------------------

    def register(self, name: str, cls: type[T], origin: str | None = None) -> type[T]:
        """Register an imported class; `origin` defaults to its module (built-in for taxabench's own)."""
        self._check_new(name)
        self._check_class(name, cls)
        if origin is None:
            package = cls.__module__.partition(".")[0]
            origin = BUILT_IN if package in ("taxabench", "baselines") else cls.__module__
        self._entries[name] = cls
        self._origins[name] = origin
        if self._on_load is not None:
            self._on_load(name, cls)
        return cls

    def register_lazy(self, name: str, target: str, description: str, origin: str = BUILT_IN,
                      **attributes: Any) -> None:
        """Register `target` ("module:Class") under `name` without importing it; `description` and `attributes`
        are what `entries()` reports until then (a test checks they match the class)."""
        self._check_new(name)
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} is not 'module:Class'")
        self._lazy[name] = Entry(name, target, description, origin, attributes)
        self._origins[name] = origin

    def _check_new(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r}: use lower-case letters, digits, '-', '_' or '+'")
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._origins[name]})")

    def _check_class(self, name: str, cls: object) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {self.base.__qualname__}")

    # plug-ins ------------------------------------------------------------------------------------------------------

    def _read_plugins(self) -> None:
        """Register the entry points of `group` (lazily: the plug-in is imported when its name is first used)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        for point in metadata.entry_points(group=self.group):
            origin = point.dist.name if point.dist is not None else "unknown distribution"
            if point.name in self._entries or point.name in self._lazy:
                raise TaxabenchError(
                    f"{self.kind} {point.name!r} from {origin} (entry point {self.group}) is already registered "
                    f"({self._origins[point.name]}); the plug-in must choose another name")
            try:
                self.register_lazy(point.name, point.value, "", origin)
            except ValueError as error:
                raise TaxabenchError(f"plug-in {origin} (entry point {self.group}): {error}") from error

    def _resolve(self, name: str) -> type[T]:
        entry = self._lazy[name]
        try:
            cls = _import(entry.target)
        except (ImportError, AttributeError) as error:
            where = "" if entry.origin == BUILT_IN else f" (from {entry.origin}, entry point {self.group})"
            raise TaxabenchError(f"{self.kind} {name!r}{where}: cannot import {entry.target}: {error}") from error
        self._check_class(name, cls)
        del self._lazy[name]
        self._entries[name] = cls
        if self._on_load is not None:
            self._on_load(name, cls)
        return cls

    # lookup ----------------------------------------------------------------------------------------------------------

    def get(self, name: str) -> type[T]:
        self._read_plugins()
        if name in self._lazy:
            return self._resolve(name)
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TaxabenchError(f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._read_plugins()
        return sorted([*self._entries, *self._lazy])

    def entries(self) -> list[Entry]:
        """Every name with its description and origin; built-ins are not imported, plug-ins are (their
        description lives in their class)."""
        rows = []
        for name in self.names():
            lazy = self._lazy.get(name)
            if lazy is not None and lazy.origin == BUILT_IN:
                rows.append(lazy)
                continue
            cls = self.get(name)
            attributes = {key: getattr(cls, key) for key in self.listed if hasattr(cls, key)}
            rows.append(Entry(name, f"{cls.__module__}:{cls.__qualname__}", getattr(cls, "description", ""),
                              self._origins[name], attributes))
        return rows

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def __contains__(self, name: str) -> bool:
        self._read_plugins()
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[tuple[str, type[T]]]:
        return iter([(name, self.get(name)) for name in self.names()])


def _import(target: str) -> Any:
    module, _, attribute = target.partition(":")
    value = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value
