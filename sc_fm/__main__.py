"""``python -m sc_fm`` is the same as the ``scfm`` console script (launchers run it this way)."""

from sc_fm.cli import entry_point

if __name__ == "__main__":
    raise SystemExit(entry_point())
