"""User-facing errors: what went wrong, where, and how to fix it.

The CLI prints these as one paragraph without a traceback (``--debug`` shows it); any other
exception is a bug and keeps its traceback.

They survive process boundaries: they pickle with their three parts (ingestion workers send
them back through ``concurrent.futures``), and a PyTorch ``DataLoader`` worker's re-raise,
which rebuilds the error in the main process as ``ErrorClass(message=TRACEBACK_TEXT)``, gives
back the original paragraph (the worker's traceback is kept as a note, printed by ``--debug``).
"""

from __future__ import annotations


class ScFmError(Exception):
    """An error caused by input or configuration, which the user can fix."""

    def __init__(self, what: str | None = None, where: str | None = None, fix: str | None = None, *,
                 message: str | None = None):
        if what is None:
            if message is None:
                raise TypeError(f"{type(self).__name__} needs what went wrong (or message=)")
            what = _original_message(message, type(self))
            if what != message:
                self.add_note(message)  # the worker's "Caught ... Original Traceback ..." text
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

    def __reduce__(self):
        return type(self), (self.what, self.where, self.fix), self.__dict__


def _original_message(text: str, cls: type) -> str:
    """The error's own paragraph from a re-raised worker traceback, which ends with the line
    ``module.Class: paragraph``; ``text`` itself when it is not such a traceback."""
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    if "Traceback" not in text or marker not in text:
        return text
    return text.rsplit(marker, 1)[1].strip()


class ConfigError(ScFmError):
    """A configuration value is missing, of the wrong type, or out of range."""


class InputDataError(ScFmError):
    """An input file (atlas, AnnData, store) is malformed or cannot be used."""


class OutputError(ScFmError):
    """An output location cannot or must not be written (exists, is an input, no space)."""
