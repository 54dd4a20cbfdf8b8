"""Micro-batching and the query-embedding cache, with a stand-in encode function."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from engine.search.batcher import EmbeddingCache, MicroBatcher
from engine.search.errors import DeadlineExceeded, ResourceExhausted


class CountingEncoder:
    """Deterministic vectors from text; records the batch sizes it was called with."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.batches.append(len(texts))
        time.sleep(self.delay_s)
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


def test_results_match_a_direct_encode() -> None:
    enc = CountingEncoder()
    batcher = MicroBatcher(enc, cache_size=0)
    texts = ["red sofa", "lamp", "red sofa", "a much longer query text"]
    np.testing.assert_array_equal(batcher.encode(texts), enc(texts))
    batcher.close()


def test_concurrent_requests_share_encoder_calls() -> None:
    enc = CountingEncoder(delay_s=0.02)
    batcher = MicroBatcher(enc, max_batch=64, cache_size=0)
    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(lambda i: batcher.encode([f"query {i}"]), range(64)))
    for i, vectors in enumerate(out):
        np.testing.assert_array_equal(vectors, enc([f"query {i}"]))
    calls = enc.batches[:-64]  # the checks above appended 64 single calls
    assert sum(calls) == 64
    assert len(calls) < 64  # requests waiting while the encoder was busy went in together
    assert max(calls) <= 64
    batcher.close()


def test_max_batch_bounds_each_call() -> None:
    enc = CountingEncoder(delay_s=0.01)
    batcher = MicroBatcher(enc, max_batch=4, window_ms=20, cache_size=0)
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda i: batcher.encode([f"q{i}"]), range(24)))
    assert max(enc.batches) <= 4 and sum(enc.batches) == 24
    batcher.close()


def test_cache_serves_repeats_without_encoding() -> None:
    enc = CountingEncoder()
    batcher = MicroBatcher(enc, cache_size=2)
    first = batcher.encode(["a", "b"])
    calls = len(enc.batches)
    again = batcher.encode(["b", "a"])
    assert len(enc.batches) == calls  # both cached
    np.testing.assert_array_equal(again, first[::-1])
    batcher.encode(["c"])  # evicts "b": "a" was looked up after it
    assert batcher.cache.get("b") is None and batcher.cache.get("c") is not None
    assert batcher.cache.hits >= 2
    batcher.close()


def test_cache_capacity_zero_disables_it() -> None:
    cache = EmbeddingCache(0)
    cache.put("a", np.zeros(3, np.float32))
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError):
        EmbeddingCache(-1)


def test_a_full_queue_is_refused_at_once() -> None:
    gate = threading.Event()

    def blocked(texts: list[str]) -> np.ndarray:
        gate.wait(5)
        return np.zeros((len(texts), 3), np.float32)

    batcher = MicroBatcher(blocked, max_batch=1, max_queue=2, cache_size=0)
    with ThreadPoolExecutor(5) as pool:
        pending = []
        for i in range(4):
            pending.append(pool.submit(batcher.encode, [f"q{i}"]))
            time.sleep(0.1)
        # One encoding inline, one taken by the worker (waiting for the encoder), two queued:
        # the queue is full.
        started = time.monotonic()
        with pytest.raises(ResourceExhausted):
            batcher.encode(["one too many"])
        assert time.monotonic() - started < 1.0
        gate.set()
        for f in pending:
            assert f.result(5).shape == (1, 3)
    batcher.close()


def test_deadline_while_waiting() -> None:
    batcher = MicroBatcher(CountingEncoder(delay_s=0.5), cache_size=0)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(batcher.encode, ["first"])  # encodes inline for 0.5 s
        time.sleep(0.1)
        with pytest.raises(DeadlineExceeded):
            batcher.encode(["slow"], timeout_s=0.05)  # queued behind it
        busy.result(5)
    batcher.close()


def test_an_idle_encoder_runs_on_the_calling_thread() -> None:
    threads = []

    def encode(texts: list[str]) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return np.zeros((len(texts), 3), np.float32)

    batcher = MicroBatcher(encode, cache_size=0)
    batcher.encode(["alone"])
    assert threads == [threading.current_thread().name]  # no hand-off to the worker
    batcher.close()


def test_encode_errors_reach_the_waiting_request() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken, cache_size=0)
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.encode(["x"])
    batcher.close()


def test_after_close_requests_still_get_answers() -> None:
    enc = CountingEncoder()
    batcher = MicroBatcher(enc, cache_size=0)
    batcher.close()
    np.testing.assert_array_equal(batcher.encode(["late"]), enc(["late"]))


def test_inline_encodes_each_call_on_its_own_thread_concurrently() -> None:
    """``inline=True`` (the static query tower): no worker, no batching, calls overlap."""
    enc = CountingEncoder(delay_s=0.05)
    batcher = MicroBatcher(enc, cache_size=16, inline=True)
    assert batcher._worker is None
    threads: set[int] = set()

    def encode(i: int) -> np.ndarray:
        threads.add(threading.get_ident())
        return batcher.encode([f"query {i}", "shared"])

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(encode, range(8)))
    elapsed = time.perf_counter() - started
    for i, vectors in enumerate(out):
        np.testing.assert_array_equal(vectors, enc([f"query {i}", "shared"]))
    # 8 calls of 50 ms one after another would take 0.4 s; run concurrently they overlap.
    assert elapsed < 0.3, elapsed
    assert len(threads) > 1
    assert batcher.cache.get("query 3") is not None  # the cache still fills
    batcher.close()
    np.testing.assert_array_equal(batcher.encode(["after close"]), enc(["after close"]))
