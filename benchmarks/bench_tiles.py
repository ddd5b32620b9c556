"""Tiled embedding cache: seconds per tile, flat memory over many planes, cheap reopening.

``python bench_tiles.py embed N FOLDER`` writes (or reuses) a (N, 2048, 2048) uint16 zarr
volume of smooth blobs (the volume of ``bench_cache.py``), embeds every plane as 3 x 3
tiles of 768 + halo 128 (the automatic tiling) into a cache in this process, and prints
seconds per tile and peak RSS. ``python bench_tiles.py reopen N FOLDER`` opens the same
volume and cache in a fresh process, counts encoder calls while the plane is made ready,
and times the first mask (model loading included). ``python bench_tiles.py`` runs 8 and
64 planes, each step in a fresh process, and prints one JSON line.

``python bench_tiles.py stub`` runs 8 and 64 planes with the encoder's network replaced by
a stub (windows are still read, normalised and resized, and features written, checksummed
and flagged): it shows whether memory grows with the number of planes and tiles in our
code, in minutes instead of the real run's hour and a half on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_cache import make_volume


def stub_encode(predictor):
    """``predictor.encode`` without the network: constant features from the resized window."""
    import numpy as np
    import torch

    from napari_sam.engine.prediction.preprocess import resize_longest_side
    from napari_sam.engine.prediction.results import Embedding

    def encode(image, normalization=None, should_stop=None):
        resized = resize_longest_side(
            normalization.apply(np.asarray(image)), predictor.model.input_size
        )
        features = torch.full((1, 256, 64, 64), float(resized.mean()))
        return Embedding(
            features,
            resized.shape[:2],
            np.shape(image)[:2],
            predictor.model.model_id,
            normalization,
        )

    return encode


def step(mode: str, planes: int, folder: Path) -> dict:
    from napari_sam.batch.embedding import embed_volume, open_cached_session

    volume = make_volume(folder / f"volume{planes}.zarr", planes)
    start = time.perf_counter()
    stub = mode == "embed-stub"
    session = open_cached_session(
        volume, folder / f"tiles{planes}{'-stub' * stub}.zarr", capacity=1
    )
    if stub:
        session.predictor.encode = stub_encode(session.predictor)
        mode = "embed"
    calls = []
    original = session.predictor.encode
    session.predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    result = {
        "mode": mode,
        "planes": planes,
        "tile": session.tile,
        "halo": session.halo,
        "stub_encoder": stub,
    }
    if mode == "embed":
        summary = embed_volume(session)
        result.update(
            seconds=summary.seconds,
            tiles=summary.encoded,
            seconds_per_tile=round(summary.seconds / max(1, summary.encoded), 3),
        )
    else:
        key = (planes // 2,)
        ready = session.has_embedding(key)
        session.embed(key)  # what the annotator does on opening a plane: nothing left to encode
        result.update(ready_on_open=ready, encoder_calls_open=len(calls))
        session.preview(key, points=[(1024, 1024)])
        result.update(first_mask_s=round(time.perf_counter() - start, 3))
    result.update(
        encoder_calls=len(calls),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return result


def main() -> None:
    if len(sys.argv) > 2:
        print(json.dumps(step(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
        return
    stub = sys.argv[1:] == ["stub"]
    results = []
    with tempfile.TemporaryDirectory(prefix="napari-sam-bench-") as folder:
        for planes in (8, 64):
            for mode in ("embed-stub",) if stub else ("embed", "reopen"):
                out = subprocess.run(
                    [sys.executable, __file__, mode, str(planes), folder],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    rss = {r["planes"]: r["peak_rss_mb"] for r in results if r["mode"] == "embed"}
    print(
        json.dumps(
            {
                "benchmark": "tiled_embedding_cache" + ("_stub_encoder" if stub else ""),
                "runs": results,
                "rss_growth_8_to_64": round(rss[64] / rss[8] - 1, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
