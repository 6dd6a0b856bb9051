"""Human-readable summaries: the table printed after an ingest and ``scfm info``."""

from __future__ import annotations

from collections import Counter

from sc_fm.store import CorpusStore


def drops_text(drops: dict[str, int]) -> str:
    return ", ".join(f"{reason}={n}" for reason, n in drops.items() if n) or "-"


def sources_table(rows: list[dict]) -> str:
    """One line per source: cells read and kept, drops by reason, genes mapped, shards."""
    header = ("dataset", "format", "read", "kept", "genes mapped", "unmapped", "shards",
              "dropped (reason=cells)")
    lines = [header]
    for row in rows:
        lines.append((str(row["dataset"]), str(row["format"]), f"{row['cells_read']:,}",
                      f"{row['cells_kept']:,}",
                      f"{row['genes_mapped']:,}/{row['genes_in_source']:,}", f"{row['unmapped_genes']:,}",
                      str(len(row["shards"])), drops_text(row["drops"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def non_counts_note(rows: list[dict]) -> str | None:
    """The note on sources ingested with values that are not counts (None when there are none)."""
    names = [str(row["dataset"]) for row in rows if row.get("values") == "non-counts"]
    if not names:
        return None
    skipped = sorted({rule for row in rows for rule in row.get("qc_skipped", [])})
    return (f"non-counts in {', '.join(names)} (ingested with prepare.allow_non_counts; QC rules "
            f"{', '.join(skipped) or '-'} skipped for them)")


def describe_store(store: CorpusStore) -> dict:
    """What ``scfm info --json`` prints: size, vocabulary, shards, sources, QC drops."""
    manifest = store.manifest
    drops: Counter = Counter()
    for row in manifest:
        drops.update({k: v for k, v in row.get("drops", {}).items() if v})
    return {
        "path": str(store.path),
        "format_version": store.attrs["format_version"],
        "n_cells": store.n_cells,
        "n_genes": store.n_genes,
        "nnz": int(sum(s.nnz for s in store.shards)),
        "n_shards": len(store.shards),
        "vocab_name": store.attrs.get("vocab_name"),
        "vocab_hash": store.vocab_hash,
        "obs_columns": {col: len(cats) for col, cats in store.categories.items()},
        "stats_groups": store.stats_groups,
        "cells_read": int(sum(row.get("cells_read", 0) for row in manifest)),
        "qc_drops": dict(drops),
        "non_count_sources": [row["dataset"] for row in manifest if row.get("values") == "non-counts"],
        "sources": manifest,
    }


def info_text(info: dict) -> str:
    """``describe_store`` as the text ``scfm info`` prints."""
    lines = [
        f"store       {info['path']}",
        f"cells       {info['n_cells']:,} kept of {info['cells_read']:,} read "
        f"({info['nnz'] / max(info['n_cells'], 1):,.0f} nonzero genes per cell)",
        f"genes       {info['n_genes']:,} (vocabulary {info['vocab_name']}, hash {info['vocab_hash']})",
        f"shards      {info['n_shards']}",
        f"format      {info['format_version']} ("
        + ("a crc32c checksum per chunk, verified on every read)" if info["format_version"] >= 2
           else "unchecksummed: chunk damage cannot be detected)"),
        "metadata    " + ", ".join(f"{c} ({n})" for c, n in info["obs_columns"].items()),
        "statistics  " + ", ".join(info["stats_groups"]),
        f"QC drops    {drops_text(info['qc_drops'])}",
        f"values      {non_counts_note(info['sources']) or 'counts'}",
        "",
        sources_table(info["sources"]) if info["sources"] else "(no sources recorded)",
    ]
    return "\n".join(lines)
