"""A finding: one problem in a content file, with where it is and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Finding:
    """One schema error or lint finding, printed as `file:line: severity: message. Fix: ...`."""

    file: str
    line: int
    severity: Severity
    message: str
    fix: str = ""

    def format(self) -> str:
        """The editor-facing line, e.g. `checkin.yml:12: error: ... Fix: ...`."""
        text = f"{self.file}:{self.line}: {self.severity}: {self.message}"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text

    @property
    def is_error(self) -> bool:
        """True for errors (which block publishing), False for warnings."""
        return self.severity == "error"
