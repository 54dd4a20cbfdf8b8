"""Per-shard FAISS build: index creation, training checks, GPU/CAGRA paths, search defaults."""

from __future__ import annotations

import logging
import re
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

# k-means uses at most this many points per centroid (FAISS's own default); more only costs time.
_TRAIN_POINTS_PER_LIST = 256
# Quantizers without k-means (SQ, PCA) still want a broad sample for their value ranges.
_MIN_TRAIN_SAMPLE = 65536
_TRAIN_SEED = 1234
_DEFAULT_EF_SEARCH = 64


def _new_index(dim: int, factory: str) -> faiss.Index:
    """An empty index for ``factory`` that accepts our int64 ids (global rows)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"invalid FAISS factory string {factory!r} for dim {dim}: {_faiss_message(e)}"
        ) from e
    if not _supports_ids(index):
        # Flat, HNSW, PQ, ... only number vectors 0..n-1; the map keeps global rows as ids.
        index = faiss.IndexIDMap2(index)
    return index


def _supports_ids(index: faiss.Index) -> bool:
    part = faiss.downcast_index(index)  # a second proxy; `index` keeps owning the C++ object
    if isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexIVF):
        return True
    if isinstance(part, faiss.IndexPreTransform):
        return _supports_ids(part.index)
    return False


def _min_train_points(index: faiss.Index) -> int:
    """Fewest training vectors ``index`` can be trained on (0 if it needs no training)."""
    if index.is_trained:
        return 0
    need = 1
    # Never rebind `index` itself: the caller's proxy may be the only owner of the C++ object,
    # and dropping it here would free the index under our feet (FAISS/SWIG ownership).
    part = faiss.downcast_index(index)
    while True:
        if isinstance(part, faiss.IndexIDMap | faiss.IndexIDMap2):
            part = faiss.downcast_index(part.index)
        elif isinstance(part, faiss.IndexPreTransform):
            for i in range(part.chain.size()):
                if isinstance(faiss.downcast_VectorTransform(part.chain.at(i)), faiss.OPQMatrix):
                    need = max(need, 256)  # OPQ trains an 8-bit PQ: k-means with 256 centroids
            part = faiss.downcast_index(part.index)
        else:
            break
    if isinstance(part, faiss.IndexIVF):
        need = max(need, part.nlist)
    pq = getattr(part, "pq", None)
    if pq is not None:
        need = max(need, pq.ksub)  # each sub-quantizer runs k-means with ksub centroids
    return need


def _faiss_message(error: Exception) -> str:
    """The useful part of a FAISS C++ exception ("Error in <signature> at <file>:<line>: ...")."""
    text = str(error).strip()
    match = re.search(r" at \S+:\d+: (?:Error: '.*?' failed: )?(.*)$", text, flags=re.DOTALL)
    return match.group(1).strip() if match else text


def check_trainable(dim: int, factory: str, counts: np.ndarray) -> None:
    """Fail fast, before any encoding, when a shard has too few items for ``factory``."""
    need = _min_train_points(_new_index(dim, factory))
    small = [(s, int(c)) for s, c in enumerate(counts) if c < need]
    if small:
        s, c = small[0]
        raise ValueError(
            f"shard {s} has {c} items, but factory {factory!r} needs at least {need} to train "
            f"({len(small)} of {len(counts)} shards are too small); use fewer IVF lists / PQ bits, "
            f"fewer shards, or 'Flat'"
        )


def is_exact_factory(dim: int, factory: str) -> bool:
    """Whether ``factory`` searches exactly (Flat): nothing to tune then."""
    index = _new_index(dim, factory)  # keep this proxy: it owns the C++ object `part` points into
    part = faiss.downcast_index(index)
    return isinstance(part, faiss.IndexIDMap2) and isinstance(
        faiss.downcast_index(part.index), faiss.IndexFlat
    )


def builder_name(factory: str, device: str) -> str:
    """What built a shard, for the manifest: the CPU, FAISS's GPU IVF, or CAGRA on the GPU."""
    if device == "cpu":
        return "faiss-cpu"
    return "cuvs-cagra->hnsw" if factory.startswith("HNSW") else "faiss-gpu"


def search_defaults(index: faiss.Index) -> dict[str, Any]:
    """The manifest's untuned ``search_defaults`` for a built shard index: an nprobe for IVF,
    an efSearch for HNSW, nothing for exact indexes."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        # FAISS's default nprobe=1 gives poor recall; probe ~1/32 of the lists, at least 16.
        return {"nprobe": int(min(ivf.nlist, max(16, ivf.nlist // 32)))}
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap | faiss.IndexIDMap2):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        return {"efSearch": _DEFAULT_EF_SEARCH}
    return {}


def _to_gpu(index: faiss.Index, shard: int) -> tuple[faiss.Index, str]:
    """Move an IVF index to all GPUs for training and adding, when there are any.

    Only IVF indexes go to the GPU: their k-means and list assignment are the costly part of a
    build. Adding to Flat is a copy, and FAISS's HNSW has no GPU version (``_cagra_hnsw``
    builds HNSW graphs on the GPU where cuVS is there), so those stay on the CPU.
    """
    if faiss.get_num_gpus() == 0:
        return index, "cpu"
    if faiss.try_extract_index_ivf(index) is None:
        logger.info("shard %d: this index type is built on the CPU (no FAISS GPU build)", shard)
        return index, "cpu"
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:
        logger.warning("shard %d: cannot build this index type on GPU (%s); using CPU", shard, e)
        return index, "cpu"
    logger.info("shard %d: building on %d GPU(s)", shard, faiss.get_num_gpus())
    return gpu_index, "gpu"


def _with_ids(index: faiss.Index, ids: np.ndarray) -> faiss.Index:
    """Wrap an index already holding n vectors (numbered 0..n-1) so that it answers ``ids``.

    FAISS only wraps empty indexes in an IndexIDMap2; a graph built elsewhere (CAGRA) arrives
    full, so the map is made around a placeholder and then pointed at the real index.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if index.ntotal != len(ids):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
    wrapped = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
    wrapped.index = index
    index.this.disown()  # the map deletes it now (own_fields), not Python's proxy
    wrapped.own_fields = True
    wrapped.ntotal = index.ntotal
    faiss.copy_array_to_vector(ids, wrapped.id_map)
    wrapped.construct_rev_map()
    return wrapped


def _cagra_hnsw(xb: np.ndarray, ids: np.ndarray, factory: str, shard: int) -> faiss.Index | None:
    """Build an ``HNSWm`` factory's graph with CAGRA on the GPU, as an HNSW index for the CPU.

    Needs a GPU and a FAISS built with cuVS (``faiss.GpuIndexCagra``); returns None, having
    logged why, when either is missing or the GPU build fails, and the caller builds on the
    CPU. The CAGRA graph (degree 2m, like HNSW's base level) becomes the base level of an
    ``IndexHNSWCagra``, which FAISS completes with upper levels; the file it writes is a
    plain FAISS HNSW index that CPU servers search with efSearch as usual.
    """
    match = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", factory)
    if match is None or faiss.get_num_gpus() == 0:
        return None
    if not hasattr(faiss, "GpuIndexCagra"):
        logger.info(
            "shard %d: %s built on the CPU: this FAISS has no CAGRA (install a cuVS build of "
            "faiss-gpu to build HNSW graphs on the GPU)",
            shard,
            factory,
        )
        return None
    m = int(match.group(1))
    try:
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexCagraConfig()
        config.graph_degree = 2 * m
        config.intermediate_graph_degree = 4 * m
        gpu_index = faiss.GpuIndexCagra(resources, xb.shape[1], faiss.METRIC_INNER_PRODUCT, config)
        gpu_index.train(np.ascontiguousarray(xb, dtype=np.float32))  # builds the graph
        cpu_index = faiss.IndexHNSWCagra(xb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        gpu_index.copyTo(cpu_index)
    except (RuntimeError, AttributeError, TypeError) as e:
        logger.warning(
            "shard %d: CAGRA build of %s on the GPU failed (%s); building it on the CPU",
            shard,
            factory,
            _faiss_message(e),
        )
        return None
    logger.info(
        "shard %d: built the %s graph of %d vectors with CAGRA on the GPU, converted to HNSW "
        "for CPU serving",
        shard,
        factory,
        len(xb),
    )
    return _with_ids(cpu_index, ids)


def build_shard_index(
    xb: np.ndarray, ids: np.ndarray, factory: str, *, shard: int = 0
) -> tuple[faiss.Index, str]:
    """Build one shard's FAISS index (inner product) from its vectors.

    Args:
        xb: (n_s, dim) float32 vectors (may be a memmap).
        ids: (n_s,) int64 global rows, used as FAISS ids.
        factory: FAISS index_factory string.
        shard: shard number, for messages.

    Returns:
        (index on the CPU, ready to write; "cpu" or "gpu" = where it was built).
    """
    n, dim = xb.shape
    index = _new_index(dim, factory)
    cagra = _cagra_hnsw(xb, ids, factory, shard) if n else None
    if cagra is not None:
        return cagra, "gpu"
    need = _min_train_points(index)
    if n < need:
        raise ValueError(
            f"shard {shard} has {n} items, but factory {factory!r} needs at least {need} to train"
        )
    index, device = _to_gpu(index, shard)
    if not index.is_trained:
        max_train = max(_TRAIN_POINTS_PER_LIST * need, _MIN_TRAIN_SAMPLE)
        if n > max_train:
            sample = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, max_train, replace=False))
        else:
            sample = np.arange(n)
        xt = np.ascontiguousarray(xb[sample], dtype=np.float32)  # (n_train, dim)
        logger.info("shard %d: training %r on %d vectors", shard, factory, len(xt))
        try:
            index.train(xt)
        except RuntimeError as e:
            raise ValueError(
                f"shard {shard}: training {factory!r} on {len(xt)} vectors failed: "
                f"{_faiss_message(e)}"
            ) from e
    # Add in chunks so a memmapped shard is never copied into RAM twice.
    for start in range(0, n, 65536):
        chunk = np.ascontiguousarray(xb[start : start + 65536], dtype=np.float32)
        index.add_with_ids(chunk, np.ascontiguousarray(ids[start : start + 65536], dtype=np.int64))
    if device == "gpu":
        index = faiss.index_gpu_to_cpu(index)
    return index, device
