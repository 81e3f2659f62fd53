"""The report's plots as PNG bytes: matplotlib on an Agg canvas of its own (no pyplot state), numbers and
ASCII run labels only, so no CJK font is needed and the same input gives the same bytes."""

from __future__ import annotations

import io
import math

from usertwin.eval.report.runs import Run
from usertwin.eval.report.tables import is_number

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4 * n_panels if n_panels > 1 else 9, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes
    return buf.getvalue()


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def loss_series(logs: list) -> tuple[list, list]:
    """(train [(step, loss)], val [(step, val_loss)]); a step logged twice (a resumed run) keeps its last row."""
    train, val = {}, {}
    for row in logs:
        step = row.get("step")
        if not is_number(step):
            continue
        if row.get("event") in ("eval", "eval_start") or ("val_loss" in row and "loss" not in row):
            if is_number(row.get("val_loss")) and math.isfinite(row["val_loss"]):
                val[step] = row["val_loss"]
        elif is_number(row.get("loss")) and math.isfinite(row["loss"]):
            train[step] = row["loss"]
    return sorted(train.items()), sorted(val.items())


def intervals(train: list) -> list[tuple[float, float, float]]:
    """(first step, last step, mean loss) of each logged train point: a log line at step s holds the mean
    loss over the steps since the previous log line (`logging_steps` of them, fewer at the end of an epoch),
    so it belongs to that interval, not to step s alone."""
    out, start = [], 0
    for step, loss in train:
        out.append((start, step, loss))
        start = step
    return out


def _draw_train(ax, train: list, color: str, label: str) -> None:
    """Each interval's mean as a flat segment over the steps it covers. An interval shorter than the usual
    one (the last, partial one) averages fewer steps, so it is noisier: drawn dotted and labelled, so that a
    high mean over 2 steps does not read as divergence."""
    spans = intervals(train)
    usual = max((b - a for a, b, _ in spans), default=0)
    full = [(a, b, v) for a, b, v in spans if b - a == usual]
    ax.hlines([v for _, _, v in full], [a for a, _, _ in full], [b for _, b, _ in full], color=color, lw=2,
              label=f"{label} train (mean of each logging interval)")
    if len(full) > 1:  # a faint line through the intervals' middles keeps the trend readable
        ax.plot([(a + b) / 2 for a, b, _ in full], [v for _, _, v in full], color=color, lw=0.8, alpha=0.4)
    partial = [s for s in spans if s[1] - s[0] != usual]
    for k, (a, b, v) in enumerate(partial):
        ax.hlines(v, a, b, color=color, lw=2, ls=":",
                  label=f"{label} train, shorter interval (fewer steps)" if k == 0 else None)
        ax.annotate(f"{b - a} step{'s' if b - a != 1 else ''}", ((a + b) / 2, v), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize="x-small", color=color)


def plot_losses(runs: list[Run]) -> bytes | None:
    series = [(i, r, *loss_series(r.logs)) for i, r in enumerate(runs)]
    series = [s for s in series if s[2] or s[3]]
    if not series:
        return None
    fig, (ax,) = _figure(1)
    for i, r, train, val in series:
        if train:
            _draw_train(ax, train, _color(i), r.label)
        if val:
            ax.plot([s for s, _ in val], [v for _, v in val], color=_color(i), lw=1, ls="--", marker="o", ms=5,
                    label=f"{r.label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.set_title("Training and validation loss")
    ax.margins(y=0.1)  # room for a short interval's label at the top
    ax.grid(alpha=0.3)
    # below the axes: a legend inside may hide a short last interval, which is what it explains
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
    return _png(fig)


def one_bucket(stats: dict, what: str) -> str | None:
    """Why a by-bucket plot is not drawn, or None when it is: with every target of every run in one bucket it
    would hold one point per run, which the metrics table already has."""
    filled = {b for s in stats.values() for b, v in s.items() if v.get("n")}
    if len(filled) != 1:
        return None
    n = sum(v.get("n", 0) for s in stats.values() for v in s.values())
    return (f"Not plotted: all {n} targets fall in one {what} bucket ({next(iter(filled))}), so there is "
            f"nothing to compare across buckets.")


def bucket_panels(stats: dict) -> list[tuple[str, str]]:
    panels = [("loss", "mean loss per target token")]
    if any(b.get("rmse") is not None for s in stats.values() for b in s.values()):
        panels.append(("rmse", "RMSE of the expected rating"))
    return panels


def plot_history(runs: list[Run], labels: list, stats: dict) -> bytes | None:
    if not stats:
        return None
    panels = bucket_panels(stats)
    fig, axes = _figure(len(panels))
    x = list(range(len(labels)))
    for ax, (key, title) in zip(axes, panels):
        for i, r in enumerate(runs):
            y = [stats.get(r.name, {}).get(b, {}).get(key) for b in labels]
            if all(v is None for v in y):
                continue
            ax.plot(x, [math.nan if v is None else v for v in y], color=_color(i), marker="o", lw=1.5, label=r.label)
        ax.set_xticks(x, labels)
        ax.set_xlabel("history length (earlier items)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)


def plot_activity(runs: list[Run], labels: list, stats: dict) -> bytes | None:
    if not stats:
        return None
    panels = bucket_panels(stats)
    fig, axes = _figure(len(panels))
    for ax, (key, title) in zip(axes, panels):
        values = [(i, r, [stats.get(r.name, {}).get(b, {}).get(key) for b in labels]) for i, r in enumerate(runs)]
        shown = [(i, r, y) for i, r, y in values if any(v is not None for v in y)]
        width = 0.8 / max(len(shown), 1)
        for j, (i, r, y) in enumerate(shown):
            x = [k - 0.4 + width * (j + 0.5) for k in range(len(labels))]
            ax.bar(x, [math.nan if v is None else v for v in y], width=width * 0.95, color=_color(i), label=r.label)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("user activity (the user's items in all)")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    return _png(fig)
