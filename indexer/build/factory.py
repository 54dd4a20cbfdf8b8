"""``--factory auto``: pick a FAISS index type from the shard size and a memory budget.

The rule (per shard; every shard gets the same factory string, sized for the largest one):

==========================================  =================================================
largest shard n                              factory
==========================================  =================================================
n < 50,000 and the floats fit               ``Flat``: exact, and a scan of 50k vectors is ~ms
n <= 1,000,000 and the HNSW graph fits      ``HNSW32``: best queries/s at high recall
the float vectors fit                       ``IVF{nlist},Flat``, nlist ~ 4 sqrt(n)
otherwise                                   ``IVF{nlist},PQ{M}x4fs``: 4-bit fast-scan PQ codes,
                                            the largest M (<= dim / 2) that fits
==========================================  =================================================

The budget covers the FAISS indexes of all shards in RAM. The vector copies kept beside each
shard for exact re-scoring are memory-mapped and not counted (``--vectors f16|i8`` shrinks
them). HNSW stops at 1M per shard because its build is slow (about 2 minutes per 200k vectors
on 2 cores) and IVF's query speed catches up at that size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "FLAT_MAX",
    "HNSW_M",
    "HNSW_MAX",
    "FactoryChoice",
    "choose_factory",
    "estimate_index_bytes",
    "format_bytes",
    "nlist_for",
    "parse_memory",
]

FLAT_MAX = 50_000
HNSW_MAX = 1_000_000
HNSW_M = 32
# FAISS k-means warns below 39 training points per centroid: clusters become noise.
_MIN_POINTS_PER_LIST = 39
# Non-IVF indexes sit in an IndexIDMap2: 8 bytes of id plus a hash-map entry for the reverse map.
_ID_MAP_BYTES = 8 + 40
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


@dataclass(frozen=True)
class FactoryChoice:
    """The factory string ``auto`` picked, why, and its estimated memory (all shards)."""

    factory: str
    reason: str
    estimated_bytes: int

    def to_json_dict(self) -> dict[str, object]:
        return {
            "factory": self.factory,
            "reason": self.reason,
            "estimated_bytes": self.estimated_bytes,
        }


def parse_memory(value: str | int) -> int:
    """Bytes from ``value``: an int, or a string such as "2GB", "512 MiB", "1.5g", "800000000".

    Decimal units (KB, MB, GB, TB = powers of 1000) and binary ones (KiB, MiB, GiB, TiB).

    Raises:
        ValueError: not a positive size.
    """
    if isinstance(value, bool):
        raise ValueError(f"memory size must be bytes or a string like '2GB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"cannot read memory size {value!r}; write bytes or a number with a unit, "
                f"e.g. 2GB, 512MiB"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"memory size must be > 0 bytes, got {value!r}")
    return size


def format_bytes(n: float) -> str:
    """``n`` bytes in a short human form, e.g. "1.5 GB" (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def nlist_for(n: int) -> int:
    """IVF list count for ``n`` vectors: the power of two nearest 4 sqrt(n), with at least 39
    vectors per list (FAISS's k-means floor), and at least 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    while nlist > 1 and n / nlist < _MIN_POINTS_PER_LIST:
        nlist //= 2
    return nlist


def estimate_index_bytes(factory: str, n: int, dim: int) -> int:
    """Rough RAM of one FAISS index of ``n`` vectors for the factory shapes ``auto`` emits.

    Flat: 4·dim per vector; HNSWm: the floats plus ~2m int32 links on the base level (5 % more
    for upper levels); IVF: the centroids plus per vector its codes and an 8-byte id
    (Flat: 4·dim, SQ8: dim, PQMx4fs: M/2 bytes). Non-IVF types add an id map.

    Raises:
        ValueError: a factory string this estimate does not know.
    """
    if factory == "Flat":
        return n * (4 * dim + _ID_MAP_BYTES)
    if match := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", factory):
        m = int(match.group(1))
        return int(n * (4 * dim + 2 * m * 4 * 1.05 + 16 + _ID_MAP_BYTES))
    if match := re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+)x4fs)", factory):
        nlist, codes = int(match.group(1)), match.group(2)
        if codes == "Flat":
            per_vector = 4 * dim
        elif codes == "SQ8":
            per_vector = dim
        else:
            per_vector = math.ceil(int(match.group(3)) / 2)
        return n * (per_vector + 8) + nlist * dim * 4
    raise ValueError(f"no memory estimate for factory {factory!r}")


def _pq_sizes(dim: int) -> list[int]:
    """Even sub-quantizer counts M dividing ``dim``, at most dim / 2 (2-d sub-vectors), largest
    first. Even, because 4-bit fast-scan packs two codes per byte."""
    return [m for m in range(dim // 2, 1, -1) if dim % m == 0 and m % 2 == 0]


def choose_factory(
    n_per_shard: int, dim: int, *, memory_budget: int | None = None, n_shards: int = 1
) -> FactoryChoice:
    """The FAISS factory string for shards of up to ``n_per_shard`` vectors (see module doc).

    Args:
        n_per_shard: vectors in the largest shard.
        dim: vector dimension.
        memory_budget: bytes for the FAISS indexes of all ``n_shards`` shards; None = no limit.
        n_shards: number of shards sharing the budget.

    Raises:
        ValueError: even the most compact PQ index does not fit in ``memory_budget``.
    """
    if n_per_shard < 0 or dim < 1 or n_shards < 1:
        raise ValueError(f"bad sizes: n_per_shard={n_per_shard}, dim={dim}, n_shards={n_shards}")
    n = max(1, n_per_shard)
    budget = None if memory_budget is None else memory_budget / n_shards
    budget_text = (
        "no memory budget"
        if memory_budget is None
        else f"budget {format_bytes(memory_budget)} for {n_shards} shard(s)"
    )

    def fits(factory: str) -> bool:
        return budget is None or estimate_index_bytes(factory, n, dim) <= budget

    def choice(factory: str, why: str) -> FactoryChoice:
        total = estimate_index_bytes(factory, n, dim) * n_shards
        return FactoryChoice(
            factory, f"{why} ({budget_text}; ~{format_bytes(total)} of index)", total
        )

    if n < FLAT_MAX and fits("Flat"):
        return choice("Flat", f"{n} vectors per shard < {FLAT_MAX}: exact search is fast enough")
    hnsw = f"HNSW{HNSW_M}"
    if n <= HNSW_MAX and fits(hnsw):
        return choice(hnsw, f"{n} vectors per shard <= {HNSW_MAX} and the HNSW graph fits")
    nlist = nlist_for(n)
    ivf_flat = f"IVF{nlist},Flat"
    if fits(ivf_flat):
        why = (
            f"{n} vectors per shard > {HNSW_MAX}"
            if n > HNSW_MAX
            else f"the HNSW graph of {n} vectors does not fit"
        )
        return choice(ivf_flat, f"{why}; the float vectors fit in IVF lists")
    for m in _pq_sizes(dim):
        factory = f"IVF{nlist},PQ{m}x4fs"
        if fits(factory):
            return choice(
                factory,
                f"the float vectors of {n} per shard do not fit: 4-bit PQ codes, "
                f"{math.ceil(m / 2)} bytes per vector",
            )
    smallest = _pq_sizes(dim)[-1] if _pq_sizes(dim) else None
    need = (
        estimate_index_bytes(f"IVF{nlist},PQ{smallest}x4fs", n, dim) * n_shards
        if smallest
        else estimate_index_bytes(ivf_flat, n, dim) * n_shards
    )
    raise ValueError(
        f"memory budget {format_bytes(memory_budget or 0)} is too small for {n_shards} shard(s) "
        f"of {n} vectors of dim {dim}: even the most compact index needs ~{format_bytes(need)}; "
        f"raise --memory-budget or pass an explicit --factory"
    )
