"""The fine-tuning widget's plot: validation mean IoU of both domains against the step.

One line for the user's domain (the validation split of the committed objects), one for
the domains to keep (the reference validation images), each starting at the released
model (step 0); after training, a marker at the kept step shows the saved weights' scores
(mixed with the released weights when a mix was chosen). matplotlib draws it on a Qt
canvas; it is imported when the first curve is drawn, so opening the widget stays fast.
"""

from __future__ import annotations

from qtpy.QtWidgets import QVBoxLayout, QWidget

USER_LABEL = "your objects (validation)"
KEEP_LABEL = "domains to keep (validation)"


class CurvesPlot(QWidget):
    """A small matplotlib canvas with the two validation curves."""

    def __init__(self) -> None:
        super().__init__()
        self.canvas = None  # created on the first draw
        self.points: list[tuple[int, float | None, float | None]] = []
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.setVisible(False)

    def reset(self) -> None:
        """Forget the curves of an earlier run."""
        self.points = []
        self.setVisible(False)

    def add(self, step: int, user: float | None, keep: float | None) -> None:
        """Add one validation (step 0: the released model) and redraw."""
        if user is None and keep is None:
            return
        self.points = [p for p in self.points if p[0] != step] + [(step, user, keep)]
        self.points.sort(key=lambda p: p[0])
        self.draw()

    def draw(self, chosen: tuple[int, float, float | None] | None = None) -> None:
        """Redraw; ``chosen`` = (step, user, keep) of the saved weights, marked with stars."""
        if self.canvas is None:
            self._make_canvas()
        axes = self.canvas.figure.axes[0]
        axes.clear()
        for index, (label, colour) in enumerate(
            ((USER_LABEL, "tab:orange"), (KEEP_LABEL, "tab:blue")), 1
        ):
            xy = [(p[0], p[index]) for p in self.points if p[index] is not None]
            if xy:
                axes.plot(*zip(*xy, strict=True), "o-", color=colour, label=label, markersize=3)
            if chosen is not None and chosen[index] is not None:
                axes.plot([chosen[0]], [chosen[index]], "*", color=colour, markersize=11)
        axes.set_xlabel("step (0: released model; stars: saved weights)")
        axes.set_ylabel("mean IoU")
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        self.canvas.figure.tight_layout()
        self.canvas.draw_idle()
        self.setVisible(True)

    def _make_canvas(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 2.6), dpi=90)
        figure.add_subplot(1, 1, 1)
        self.canvas = FigureCanvasQTAgg(figure)
        self.canvas.setMinimumHeight(220)
        self.layout().addWidget(self.canvas)
