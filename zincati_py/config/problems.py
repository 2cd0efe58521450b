"""A configuration problem that names the file, the key and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


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
        return f"{prefix}{': '.join(parts)}: {self.message}"

    def as_dict(self) -> dict[str, str | None]:
        return {
            "severity": self.severity,
            "file": str(self.file) if self.file is not None else None,
            "key": self.key,
            "message": self.message,
        }
