"""Evaluation results as a text table, a CSV file and (with matplotlib) a plot.

One row per (data set, model); columns are the mean IoU of each prompt type and of
iterative prompting after each number of clicks. The CSV carries the same numbers for
any plotting tool; the plot (mean IoU against clicks) is written only when matplotlib is
installed, which napari-sam does not require.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

from napari_sam.training.evaluation import EvaluationReport

log = logging.getLogger(__name__)

Row = tuple[str, str, EvaluationReport]  # (data set, model label, report)


def format_table(rows: list[Row]) -> str:
    """A fixed-width table of mean IoU; clicks columns hold the iterative results."""
    clicks = max(len(r.iterative_point) for _, _, r in rows)
    header = (
        f"{'data':<12} {'model':<28} {'objects':>7} {'point':>6} "
        f"{'box':>6} {'pt+neg':>6} {'pred':>5} | "
        + " ".join(f"{'p' + str(k):>5}" for k in range(1, clicks + 1))
        + " | "
        + " ".join(f"{'b' + str(k):>5}" for k in range(1, clicks + 1))
    )
    lines = [header, "-" * len(header)]
    for data, label, report in rows:
        lines.append(
            f"{data[:12]:<12} {label[:28]:<28} {report.objects:>7} "
            f"{report.point:>6.3f} {report.box:>6.3f} "
            f"{report.point_negative:>6.3f} {report.predicted_iou:>5.3f} | "
            + " ".join(f"{v:>5.3f}" for v in report.iterative_point)
            + " | "
            + " ".join(f"{v:>5.3f}" for v in report.iterative_box)
        )
    lines.append(
        "p1..pN: point, then N-1 corrective clicks; b1..bN: box, then N-1 clicks (mean IoU)."
    )
    lines.append(
        "pred: mean IoU the model predicts for its point masks (segment-everything's default "
        "pred_iou_thresh is 0.88)."
    )
    automatic = [(data, label, r) for data, label, r in rows if r.automatic_ap]
    if automatic:
        lines.append("")
        lines.append(
            f"{'data':<12} {'model':<28} {'AP50':>6} {'AP75':>6} {'AP90':>6} {'mAP':>6}  "
            "(segment everything)"
        )
        for data, label, r in automatic:
            ap = r.automatic_ap
            lines.append(
                f"{data[:12]:<12} {label[:28]:<28} "
                f"{ap[0.5]:>6.3f} {ap[0.75]:>6.3f} {ap[0.9]:>6.3f} "
                f"{sum(ap.values()) / len(ap):>6.3f}"
            )
    return "\n".join(lines)


def write_csv(path: str | Path, rows: list[Row]) -> Path:
    """One line per (data set, model, measure, clicks) with its mean IoU."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["data", "model", "model_id", "objects", "measure", "clicks", "mean_iou"])
        for data, label, r in rows:
            for measure in ("point", "box", "point_negative", "predicted_iou"):
                writer.writerow(
                    [data, label, r.model_id, r.objects, measure, 1, f"{getattr(r, measure):.4f}"]
                )
            for measure, values in (
                ("iterative_point", r.iterative_point),
                ("iterative_box", r.iterative_box),
            ):
                for k, value in enumerate(values, 1):
                    writer.writerow(
                        [data, label, r.model_id, r.objects, measure, k, f"{value:.4f}"]
                    )
            for threshold, value in (r.automatic_ap or {}).items():
                writer.writerow(
                    [
                        data,
                        label,
                        r.model_id,
                        r.objects,
                        f"automatic_ap@{threshold}",
                        "",
                        f"{value:.4f}",
                    ]
                )
    return path


def plot_available() -> bool:
    """Whether matplotlib is installed (the plot is optional)."""
    return importlib.util.find_spec("matplotlib") is not None


def save_plot(path: str | Path, rows: list[Row]) -> Path | None:
    """Mean IoU against clicks, one line per (data set, model, start); None without matplotlib."""
    if not plot_available():
        log.info("matplotlib is not installed: no plot, the CSV has the numbers")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for data, label, r in rows:
        for start, values in (("point", r.iterative_point), ("box", r.iterative_box)):
            axis.plot(
                range(1, len(values) + 1), values, marker="o", label=f"{data} {label} ({start})"
            )
    axis.set_xlabel("prompts (first prompt + corrective clicks)")
    axis.set_ylabel("mean IoU")
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
