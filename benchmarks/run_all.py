"""Run every benchmark, each in a fresh process, and write a Markdown table.

Usage: ``python benchmarks/run_all.py`` (or ``make bench``). Results go to
``benchmarks/results/latest.json`` and ``benchmarks/results/latest.md``.

Every benchmark runs in fp32 (``NAPARI_SAM_NO_AUTO_BF16=1``), so that the table compares
across machines; one more row times the encoder in fp32 and bf16 in one process and
says what ``auto`` chooses on this CPU (docs/precision.md).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run(*args: str, display: bool = False, fp32: bool = True) -> dict:
    command = [sys.executable, *args]
    if display and not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1400x900x24", *command]
    env = {**os.environ, "NAPARI_SAM_NO_AUTO_BF16": "1"} if fp32 else None
    output = subprocess.run(
        command, cwd=HERE, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    encoder_eager = run("bench_encoder.py", "eager")
    encoder_ours = run("bench_encoder.py", "ours")
    precision = run("bench_encoder.py", "precision", fp32=False)  # says what auto chooses
    click = run("bench_click.py")
    annotator = run("bench_annotator.py", display=True)
    everything = {
        mode: run("bench_everything.py", mode)
        for mode in ("ours", "reference_equivalent", "reference_style")
    }
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "encoder_eager": encoder_eager,
        "encoder_ours": encoder_ours,
        "encoder_precision": precision,
        "click": click,
        "annotator": annotator,
        "everything": everything,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    speedup = encoder_eager["median_s"] / encoder_ours["median_s"]
    table = "\n".join(
        [
            "| measurement (vit_t, DSB2018 512x512, CPU) | ours | reference-style | ratio |",
            "|---|---|---|---|",
            f"| encoder, seconds per image (median of 5) | {encoder_ours['median_s']:.2f} | "
            f"{encoder_eager['median_s']:.2f} | {speedup:.2f}x |",
            f"| encoder in bf16 (`--precision bf16`; {precision['cpu']}, auto chooses "
            f"{precision['auto_resolves_to']}), seconds | {precision['bf16_median_s']:.2f} | "
            f"{precision['fp32_median_s']:.2f} (ours, fp32) | {precision['fp32_over_bf16']:.2f}x |",
            f"| encoder peak RSS, MB | {encoder_ours['peak_rss_mb']:.0f} | "
            f"{encoder_eager['peak_rss_mb']:.0f} | |",
            f"| click to 3 masks at 512x512, ms (median of {click['calls']}) | "
            f"{click['ours_ms_median']:.1f} | {click['reference_style_ms_median']:.1f} | "
            f"{click['speedup']:.2f}x |",
            f"| pixel agreement of the click masks | {click['pixel_agreement']:.6f} | | |",
            f"| napari: point added -> preview shown, ms (median of {annotator['clicks']}) | "
            f"{annotator['widget_ms_median']:.1f} | "
            f"{annotator['reference_style_ms_median']:.1f} (decoder only) | |",
            *everything_rows(everything),
        ]
    )
    (HERE / "results" / "latest.md").write_text(table + "\n")
    print(table)


def everything_rows(everything: dict) -> list[str]:
    """Segment-everything rows: our defaults and the reference algorithm, same run."""
    ours, equivalent, style = (
        everything["ours"],
        everything["reference_equivalent"],
        everything["reference_style"],
    )
    return [
        "| segment everything, seconds incl. encoder "
        f"({ours['points_decoded']} vs 1024 grid points) | "
        f"{ours['seconds']:.1f} | {style['seconds']:.1f} | "
        f"{style['seconds'] / ours['seconds']:.1f}x |",
        f"| ... with the reference's settings, every grid point | {equivalent['seconds']:.1f} | "
        f"{style['seconds']:.1f} | {style['seconds'] / equivalent['seconds']:.1f}x |",
        f"| segment everything peak RSS, MB | {ours['peak_rss_mb']} | {style['peak_rss_mb']} | |",
        "| segment everything AP@0.5 / AP@0.75 vs human labels | "
        f"{ours['ap50']:.3f} / {ours['ap75']:.3f} | "
        f"{style['ap50']:.3f} / {style['ap75']:.3f} | |",
    ]


if __name__ == "__main__":
    main()
