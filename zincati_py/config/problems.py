"""A configuration problem that names the file, the key and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]

# Control characters shown escaped (\n, \t, \x1b, ...) so a problem stays on one line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x09: "\\t"}


@dataclass(frozen=True)
class Problem:
    severity: Severity
    file: Path | None
    key: str
    message: str

    @classmethod
    def error(cls, file: Path | None, key: str, message: str) -> Problem:
        return cls("error", file, key, message)

    @classmethod
    def warning(cls, file: Path | None, key: str, message: str) -> Problem:
        return cls("warning", file, key, message)

    def __str__(self) -> str:
        where = str(self.file) if self.file is not None else "(defaults)"
        parts = [where, self.key] if self.key else [where]
        prefix = "" if self.severity == "error" else "warning: "
        # One problem per line: a newline in a file name, key or value must not start another.
        return f"{prefix}{': '.join(parts)}: {self.message}".translate(_ESCAPES)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "severity": self.severity,
            "file": str(self.file) if self.file is not None else None,
            "key": self.key,
            "message": self.message,
        }
