"""Embedding cache: flat memory over many planes, and zero encoder calls on reopening.

``python bench_cache.py embed N`` writes a (N, 2048, 2048) uint16 zarr volume of smooth
blobs, embeds every plane into a cache in this process, and prints peak RSS;
``python bench_cache.py reopen N`` reopens the same volume and cache, counts encoder
calls and times the first mask. ``python bench_cache.py`` runs 8 and 64 planes, each step
in a fresh process, and prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = 2048


def make_volume(path: Path, planes: int):
    import numpy as np
    import zarr
    from scipy import ndimage

    if path.exists():
        return zarr.open_array(path, mode="r")
    array = zarr.create_array(
        path, shape=(planes, SIDE, SIDE), chunks=(1, 512, 512), dtype="uint16"
    )
    rng = np.random.default_rng(0)
    for z in range(planes):
        seeds = np.zeros((SIDE // 8, SIDE // 8), np.float32)
        seeds[tuple(rng.integers(0, SIDE // 8, size=(2, 400)))] = 1.0
        blobs = ndimage.gaussian_filter(seeds, 2.0)
        plane = np.kron(blobs / blobs.max(), np.ones((8, 8), np.float32)) * 3000
        array[z] = (plane + rng.normal(200, 20, plane.shape)).clip(0, 65535).astype("uint16")
    return array


def step(mode: str, planes: int, folder: Path) -> dict:
    from napari_sam.batch.embedding import embed_volume, open_cached_session

    volume = make_volume(folder / f"volume{planes}.zarr", planes)
    start = time.perf_counter()
    session = open_cached_session(
        volume, folder / f"cache{planes}.zarr", capacity=1, tile=0
    )  # whole planes
    calls = []
    original = session.predictor.encode
    session.predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    result = {"mode": mode, "planes": planes}
    if mode == "embed":
        summary = embed_volume(session)
        result.update(seconds=summary.seconds, encoded=summary.encoded)
    else:
        session.preview((planes // 2,), points=[(1024, 1024)])
        result.update(first_mask_s=round(time.perf_counter() - start, 3))
    result.update(
        encoder_calls=len(calls),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return result


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(step(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="napari-sam-bench-") as folder:
        for planes in (8, 64):
            for mode in ("embed", "reopen"):
                out = subprocess.run(
                    [sys.executable, __file__, mode, str(planes), folder],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
    rss = {r["planes"]: r["peak_rss_mb"] for r in results if r["mode"] == "embed"}
    print(
        json.dumps(
            {
                "benchmark": "embedding_cache",
                "runs": results,
                "rss_growth_8_to_64": round(rss[64] / rss[8] - 1, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
