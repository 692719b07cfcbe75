"""Byte sizes as people write them ("8G", "512MiB", "1.5GB") and back. Units are binary (G = GiB): VRAM is
sold in GiB, and `--vram 8G` should mean what nvidia-smi shows as 8192 MiB."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parses a size such as "8G", "8GiB", "512M", "1.5g" or "1048576" into bytes; raises ValueError."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. 8G, 512M, 1.5GiB or a byte count)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1:
        raise ValueError(f"size must be at least one byte: {text!r}")
    return int(value)


def format_size(n: int | float) -> str:
    """Formats bytes for people: 8589934592 -> '8.0 GiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
