"""User-facing errors: what went wrong, where, and how to fix it.

The CLI prints these as one paragraph without a traceback (``--debug`` shows it); any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class ScFmError(Exception):
    """An error caused by input or configuration, which the user can fix."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [self.what.rstrip(".") + "."]
        if self.where:
            parts.insert(0, f"{self.where}:")
        if self.fix:
            parts.append(f"Fix: {self.fix.rstrip('.')}.")
        return " ".join(parts)


class ConfigError(ScFmError):
    """A configuration value is missing, of the wrong type, or out of range."""


class InputDataError(ScFmError):
    """An input file (atlas, AnnData, store) is malformed or cannot be used."""
