import pytest

from napari_sam.engine.annotation.embedding_store import EmbeddingStore


class FakeBackend:
    def __init__(self):
        self.saved, self.loads = {}, []

    def load(self, key):
        self.loads.append(key)
        return self.saved.get(key)

    def save(self, key, embedding):
        self.saved[key] = embedding


def test_least_recently_used_is_evicted():
    store = EmbeddingStore(capacity=2)
    store.put((0,), "a")
    store.put((1,), "b")
    assert store.get((0,)) == "a"  # (0,) is now the most recent
    store.put((2,), "c")
    assert store.keys() == [(0,), (2,)]
    assert store.get((1,)) is None


def test_backend_is_consulted_on_a_miss_and_fed_on_put():
    backend = FakeBackend()
    store = EmbeddingStore(capacity=1, backend=backend)
    store.put((3,), "x")
    store.put((4,), "y")  # evicts (3,) from memory
    assert backend.saved == {(3,): "x", (4,): "y"}
    assert store.get((3,)) == "x" and backend.loads == [(3,)]


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        EmbeddingStore(capacity=0)
