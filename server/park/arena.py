"""The session address arena: the device address range where a node's workers place their sessions' allocations,
so that a parked session finds its addresses free again when a worker on another node restores it.

Every worker is its own process with its own address space, so one range serves every session of every node: a
restored session only has to find its own old addresses free in a fresh process, and the arena keeps them away from
the ranges the driver picks for itself (module code and globals, contexts, host mappings). The default,
0x600000000000 with 16 TiB, lies inside the 47-bit user address space that CUDA's unified addressing shares with
the host, above where Linux places ordinary mappings. `fargpu server --arena BASE:SIZE` (or FARGPU_ARENA) moves it;
nodes that may restore each other's sessions should use the same one (a restore reserves each allocation at its
recorded address wherever the arena is, and fails, leaving the session parked, when that range is taken).
"off" lets the driver place allocations anywhere: sessions still park, but their restore may then find an address
taken. The worker reads the normalised form "0xBASE:0xSIZE" (or "off") from FARGPU_ARENA (server/replay/park.c)."""

from __future__ import annotations

from fargpu.pool_manager.units import parse_size

DEFAULT_ARENA = "0x600000000000:16T"
GRANULE = 2 << 20  # allocations are mapped in 2 MiB granules: the arena's base and size are multiples of it
VA_LIMIT = 1 << 47  # the user address space CUDA's unified addressing shares with the host (x86-64, 4-level pages)
MIN_SIZE = 1 << 30


def parse_arena(text: str) -> str:
    """"BASE[:SIZE]" (BASE hex, SIZE like 16T or a byte count; default size 16 TiB) or "off", checked, as the worker
    reads it: "0xBASE:0xSIZE" or "off". Raises ValueError saying what is wrong."""
    t = text.strip().lower()
    if t in ("off", "none", "0"):
        return "off"
    base_text, _, size_text = t.partition(":")
    try:
        base = int(base_text, 16)
    except ValueError:
        raise ValueError(f"the arena's base {base_text!r} is not a hexadecimal address (e.g. 0x600000000000)") from None
    size = parse_size(size_text) if size_text else 16 << 40
    if base % GRANULE or size % GRANULE:
        raise ValueError(f"the arena {text!r} must start and end on a 2 MiB boundary")
    if base == 0 or size < MIN_SIZE:
        raise ValueError(f"the arena {text!r} must start above 0 and hold at least 1 GiB")
    if base + size > VA_LIMIT:
        raise ValueError(f"the arena {text!r} ends at {base + size:#x}, beyond the 47-bit address space "
                         f"({VA_LIMIT:#x}) that device allocations share with the host")
    return f"{base:#x}:{size:#x}"
