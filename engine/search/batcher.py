"""Micro-batching of query encodes across concurrent requests, with an LRU embedding cache.

Concurrent requests share one encoder: each request queues its texts; one worker thread takes
everything queued (up to `max_batch` texts, waiting at most `window_ms` for more once it has one)
and encodes it in one call. When the encoder is idle and nothing is queued, a request encodes on
its own thread (no hand-off); while the encoder is busy, texts queue up and the next call takes
them all, so under load batching turns many small encoder calls into a few larger ones. A full
queue is refused at once. An encoder that is thread-safe and costs microseconds (the static
query tower) gains nothing from batching and loses the hand-off: with `inline=True` every request
encodes on its own thread, concurrently, and there is no worker or queue.

`EncoderGate` shares the one encoder between that query path and item-tower work (Embed of
items, the encoding of Upserts): queries go first, item work runs in small chunks that wait
whenever a query is waiting, and at most `item_jobs` item-tower requests encode at once. One
256-text item Embed used to hold the encoder for 40-70 s in one call, and every new-query
Search waited behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

import numpy as np

from engine.search.errors import DeadlineExceeded, ResourceExhausted

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]


class EmbeddingCache:
    """LRU map text → (dim,) float32 vector. `capacity` 0 disables it. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        if self.capacity == 0:
            return None
        with self._lock:
            vector = self._items.get(text)
            if vector is None:
                self.misses += 1
                return None
            self._items.move_to_end(text)
            self.hits += 1
            return vector

    def put(self, text: str, vector: np.ndarray) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[text] = vector
            self._items.move_to_end(text)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every entry and reset the hit/miss counts."""
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


class EncoderGate:
    """One encoder at a time (fast tokenizers refuse concurrent calls with different settings,
    and torch already uses every core per call), queries before item-tower work.

    `query()` holds the encoder for one query encode; `encode_items()` encodes item texts
    `chunk` at a time, taking the encoder for each chunk only while no query waits, after an
    item-tower slot (at most `item_jobs` requests at once; a request that waits longer than
    `item_wait_s` for one is refused with RESOURCE_EXHAUSTED).
    """

    def __init__(self, *, chunk: int = 4, item_jobs: int = 1, item_wait_s: float = 30.0) -> None:
        if chunk < 1 or item_jobs < 1 or item_wait_s < 0:
            raise ValueError("need chunk >= 1, item_jobs >= 1 and item_wait_s >= 0")
        self.chunk = chunk
        self.item_wait_s = item_wait_s
        self._cond = threading.Condition()
        self._busy = False
        self._queries_waiting = 0
        self._item_slots = threading.BoundedSemaphore(item_jobs)

    @contextmanager
    def query(self) -> Iterator[None]:
        with self._cond:
            self._queries_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._busy)
            finally:
                self._queries_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def encode_items(self, encode: EncodeFn, texts: list[str]) -> np.ndarray:
        """`encode(texts)` → (n, dim), run in chunks that yield the encoder to waiting queries."""
        if not self._item_slots.acquire(timeout=self.item_wait_s):
            raise ResourceExhausted("the item encoder is busy with other requests; retry later")
        try:
            parts = []
            for start in range(0, len(texts), self.chunk):
                with self._cond:
                    self._cond.wait_for(lambda: not self._busy and self._queries_waiting == 0)
                    self._busy = True
                try:
                    parts.append(encode(texts[start : start + self.chunk]))
                finally:
                    self._release()
        finally:
            self._item_slots.release()
        return np.concatenate(parts) if parts else encode([])

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


class MicroBatcher:
    """Encodes query texts for many threads through one worker. See the module docstring."""

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch: int = 32,
        window_ms: float = 0.0,
        max_queue: int = 1024,
        cache_size: int = 10_000,
        on_batch: Callable[[int], None] | None = None,
        inline: bool = False,
    ) -> None:
        """``inline``: encode every call on the calling thread, concurrently (``encode`` must be
        thread-safe), with no worker thread or queue; see the module docstring."""
        if max_batch < 1 or max_queue < 1 or window_ms < 0:
            raise ValueError("need max_batch >= 1, max_queue >= 1 and window_ms >= 0")
        self._encode = encode
        self.inline = inline
        self.max_batch = max_batch
        self.window_s = window_ms / 1e3
        self.cache = EmbeddingCache(cache_size)
        self._queue: queue.Queue[tuple[str, Future]] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._closed = threading.Event()
        self._direct_lock = threading.Lock()  # encodes after close() run one at a time
        self._busy = threading.Lock()  # held while the encoder runs (worker or inline)
        self._worker = None
        if not inline:
            self._worker = threading.Thread(target=self._run, name="aisle-encoder", daemon=True)
            self._worker.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def encode(self, texts: list[str], timeout_s: float | None = None) -> np.ndarray:
        """(n, dim) float32 vectors for `texts`, cached ones without encoding.

        Raises ResourceExhausted when the queue is full, DeadlineExceeded past `timeout_s`.
        """
        vectors: list[np.ndarray | None] = [self.cache.get(t) for t in texts]
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing and self.inline:
            fresh = self._encode([texts[i] for i in missing])
            for j, i in enumerate(missing):
                vectors[i] = fresh[j]
                self.cache.put(texts[i], fresh[j])
            if self._on_batch is not None:
                self._on_batch(len(missing))
        elif missing:
            if self._closed.is_set():  # a request still on a replaced snapshot
                with self._direct_lock:
                    fresh = self._encode([texts[i] for i in missing])
                for j, i in enumerate(missing):
                    vectors[i] = fresh[j]
            elif self._queue.empty() and self._busy.acquire(blocking=False):
                # Idle encoder, nothing queued: encode on this thread. Handing one text to the
                # worker and back costs two thread wake-ups (~1-3 ms under the GIL) for nothing.
                try:
                    fresh = self._encode([texts[i] for i in missing])
                finally:
                    self._busy.release()
                for j, i in enumerate(missing):
                    vectors[i] = fresh[j]
                    self.cache.put(texts[i], fresh[j])
                if self._on_batch is not None:
                    self._on_batch(len(missing))
            else:
                futures = []
                for i in missing:
                    future: Future = Future()
                    try:
                        self._queue.put_nowait((texts[i], future))
                    except queue.Full:
                        for f in futures:
                            f.cancel()
                        raise ResourceExhausted(
                            "the query encoder queue is full; retry with backoff"
                        ) from None
                    futures.append((i, future))
                if self._closed.is_set():
                    self._drain()  # closed while we queued: the worker may be gone already
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                for i, future in futures:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        vectors[i] = future.result(timeout=remaining)
                    except FutureTimeout:
                        raise DeadlineExceeded(
                            "deadline passed while waiting for the encoder"
                        ) from None
        return np.stack(vectors).astype(np.float32, copy=False)

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                batch.append(item)
            live = [(text, f) for text, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                unique = list(dict.fromkeys(text for text, _ in live))
                with self._busy:  # waits for an inline encode on a request thread
                    encoded = self._encode(unique)  # (u, dim)
                by_text = {text: encoded[j] for j, text in enumerate(unique)}
                for text, vector in by_text.items():
                    self.cache.put(text, vector)
                for text, future in live:
                    future.set_result(by_text[text])
                if self._on_batch is not None:
                    self._on_batch(len(unique))
            except Exception as error:  # the requests waiting on this batch get the error
                log.exception("query encode failed for a batch of %d", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
        self._drain()

    def _drain(self) -> None:
        """After close(): encode what is still queued so no waiting request is dropped."""
        while True:
            try:
                text, future = self._queue.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._encode([text])[0])
                except Exception as error:
                    future.set_exception(error)

    def close(self) -> None:
        """Stop the worker once the queue is drained; later calls encode directly."""
        self._closed.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
