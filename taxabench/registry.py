"""String-keyed registries: datasets, methods, metrics and feature extractors are each one file, one name.

Names become folder and cache-file names, so they are validated: lower-case letters, digits, `-` and `_`.
An unknown name fails with the list of valid ones.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Generic, TypeVar

from taxabench.errors import TaxabenchError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_+-]*$")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str, cls: type[T]) -> type[T]:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r}: use lower-case letters, digits, '-', '_' or '+'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].__qualname__})")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {self.base.__qualname__}")
        self._entries[name] = cls
        return cls

    def get(self, name: str) -> type[T]:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TaxabenchError(f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[tuple[str, type[T]]]:
        return iter(sorted(self._entries.items()))
