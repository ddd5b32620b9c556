"""A bounded in-memory store of image embeddings, keyed by plane.

Visiting slices of a stack computes one embedding per slice; keeping the most recent
ones (least recently used evicted first) makes going back and forth instant while memory
stays bounded (one MobileSAM embedding is 4 MB). A persistent backend (the on-disk
embedding cache) can sit behind it: misses are looked up there before anyone encodes,
and new embeddings are handed to it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

from napari_sam.engine.prediction.results import Embedding

Key = tuple[int, ...]


class EmbeddingBackend(Protocol):
    """Persistent storage behind the in-memory store (e.g. a zarr embedding cache)."""

    def load(self, key: Key) -> Embedding | None:
        """The stored embedding of a plane, or None."""

    def save(self, key: Key, embedding: Embedding) -> None:
        """Store an embedding durably."""


class EmbeddingStore:
    """LRU of embeddings; safe to use from a worker thread and the GUI thread."""

    def __init__(self, capacity: int = 16, backend: EmbeddingBackend | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1; got {capacity}")
        self.capacity = capacity
        self.backend = backend
        self._items: OrderedDict[Key, Embedding] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def get(self, key: Key) -> Embedding | None:
        """The embedding of ``key`` from memory, else from the backend, else None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        if self.backend is not None:
            found = self.backend.load(key)
            if found is not None:
                self._remember(key, found)
            return found
        return None

    def put(self, key: Key, embedding: Embedding) -> None:
        """Keep an embedding (and hand it to the backend)."""
        self._remember(key, embedding)
        if self.backend is not None:
            self.backend.save(key, embedding)

    def keys(self) -> list[Key]:
        """Keys in memory, least recently used first."""
        with self._lock:
            return list(self._items)

    def _remember(self, key: Key, embedding: Embedding) -> None:
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
