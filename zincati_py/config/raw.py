"""The merged raw tree's types: values with the fragment that set them (no validation here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ListOf:
    """Schema node: an array of tables whose items follow ``item``."""

    item: dict[str, Any]


@dataclass(frozen=True)
class Sourced:
    """A value and the fragment that set it, so later errors can name the file."""

    value: Any
    file: Path


@dataclass
class Entry:
    """One ``[[...]]`` table: its keys, where each came from, and its position in its file."""

    values: dict[str, Sourced]
    file: Path
    index: int

    def key(self, array: str, name: str | None = None) -> str:
        base = f"{array}[{self.index}]"
        return f"{base}.{name}" if name else base


@dataclass
class RawConfig:
    """The merged tree: dotted scalar keys, window entries in order, schedules by name."""

    scalars: dict[str, Sourced] = field(default_factory=dict)
    windows: list[Entry] = field(default_factory=list)
    schedules: dict[str, Entry] = field(default_factory=dict)
    fragments: list[Path] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        item = self.scalars.get(key)
        return default if item is None else item.value

    def source(self, key: str) -> Path | None:
        item = self.scalars.get(key)
        return None if item is None else item.file
