import torch

from napari_sam.engine.model import runtime


def test_resolve_device_keeps_an_explicit_choice():
    assert runtime.resolve_device("cpu") == "cpu"
    assert runtime.resolve_device("cuda:1") == "cuda:1"


def test_resolve_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.resolve_device() == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device(None) == "cuda"


def test_tune_allocator_can_be_disabled(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.setenv("NAPARI_SAM_NO_MALLOC_TUNING", "1")
    assert runtime.tune_allocator() is False
    assert runtime._tuned is False


def test_tune_allocator_applies_once_on_linux(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.delenv("NAPARI_SAM_NO_MALLOC_TUNING", raising=False)
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: FakeLibc())
    assert runtime.tune_allocator() is True
    assert calls == [(-4, 0), (-1, 1 << 30), (-2, 64 << 20)]
    assert runtime.tune_allocator() is True
    assert len(calls) == 3  # not applied twice
