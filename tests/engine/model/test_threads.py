import sys
import threading

import pytest
import torch

from napari_sam.engine.model.threads import TorchThread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc arenas are Linux-only")
def test_torch_thread_allocates_from_the_main_arena():
    with TorchThread() as worker:
        assert worker.in_main_arena
        assert worker.run(threading.current_thread) is not threading.current_thread()


def test_results_and_errors_reach_the_caller():
    with TorchThread() as worker:
        assert worker.run(lambda a, b=0: a + b, 2, b=3) == 5
        with pytest.raises(ZeroDivisionError):
            worker.run(lambda: 1 / 0)
        assert worker.run(lambda: "still serving") == "still serving"


def test_calls_run_in_order():
    seen = []
    with TorchThread() as worker:
        futures = [worker.submit(seen.append, i) for i in range(20)]
        for future in futures:
            future.result()
    assert seen == list(range(20))


def test_thread_count_does_not_leak_to_later_threads():
    before = torch.get_num_threads()
    with TorchThread(num_threads=1) as worker:
        assert worker.run(torch.get_num_threads) == 1
    result = []
    thread = threading.Thread(target=lambda: result.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert result == [before] and torch.get_num_threads() == before


def test_shut_down_thread_refuses_work():
    worker = TorchThread()
    worker.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        worker.run(lambda: None)
