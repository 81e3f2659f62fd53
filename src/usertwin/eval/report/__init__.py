"""`usertwin report RUN_DIR [RUN_DIR ...] -o report.html`: compare runs in one self-contained HTML file.

The HTML needs no network to open: plots are PNG images (matplotlib, Agg canvas, no pyplot state) embedded
as base64 `data:` URIs, the CSS is inline and there is no JavaScript at all (a Content-Security-Policy in the
page forbids scripts and every fetch). Beside it, `report.md` holds the same tables in Markdown with the plots
as PNG files next to it (`<stem>-loss.png`, ...), for pasting into papers and issues. Every file is written
atomically.

What it reads from a run directory (the files `usertwin.rundir.RunDir` names; any may be missing, and the
report says which):

* `RunDir.config` (the resolved config of `usertwin train`): ablation, unit, history_strategy of the run.
* `RunDir.summary` (written at the end of `usertwin train`): steps, validation losses, speed.
* `RunDir.logs`: train loss per step and validation loss points (a resumed run's repeated steps count once).
* `RunDir.metrics` (`usertwin evaluate`): any nested dict; numeric leaves become dotted columns
  (`rating.expected.rmse`, `text.en.bleu`, `pick.accuracy`), with `overall`/`all` levels left out of the name
  and per-bucket sub-dicts (`by_activity`, ...) left out of the main table.
* `RunDir.predictions(split)` (`usertwin predict`): per-target loss, history length, user activity, rating
  distributions; for the history-length and activity plots and the browsable sample of predictions.

Plots hold only numbers and run names (a run name that is not plain ASCII is drawn as `run N`), so no CJK
font is needed; all user text is in the HTML, escaped.

The page leads with the verdict (`verdict`): each run's headline metrics against the best baseline on the same
targets, then runs that differ only in history; the full metrics table is folded below it.

The package follows the data: `runs` reads run directories, `tables` builds the metrics and bucket tables,
`verdict` reads the headline metrics off the table, `plots` draws, `page` writes HTML and Markdown;
`build_report` runs them in that order.
"""

from __future__ import annotations

from pathlib import Path

from usertwin.atomic import atomic_open, write_text
from usertwin.errors import UsertwinError
from usertwin.eval.report.page import render_html, render_markdown, sample_rows
from usertwin.eval.report.plots import one_bucket, plot_activity, plot_history, plot_losses
from usertwin.eval.report.runs import Run, load_run, name_runs
from usertwin.eval.report.tables import (
    Table,
    bucket_tables,
    flatten_metrics,
    fmt,
    history_bucket,
    history_labels,
    metrics_table,
)
from usertwin.eval.report.verdict import Comparison, Verdict, build_verdict

__all__ = ["Comparison", "Run", "Table", "Verdict", "build_report", "build_verdict", "bucket_tables", "flatten_metrics", "fmt", "history_bucket",
           "history_labels", "load_run", "metrics_table", "render_html", "render_markdown"]


def build_report(run_dirs: list[Path], output_html: Path, baselines: dict | None = None, max_examples: int = 5,
                 *, rows_per_user: int = 3, split: str = "test", title: str = "usertwin report") -> dict:
    """Write `output_html` (self-contained) and `<stem>.md` beside it, with the plots as `<stem>-loss.png`,
    `<stem>-history.png`, `<stem>-activity.png` (those that have data).

    `baselines`: `{name: {metric: value}}`, one table row each, marked as a baseline (see `tables._align_baseline`
    for how metric names meet the runs' columns). `max_examples`: users shown per run in the sample of
    predictions, `rows_per_user` targets each. `split`: which split's predictions (`RunDir.predictions`) to read.

    Returns {"html": Path, "markdown": Path, "images": [Path], "runs": [{"name", "path", "missing",
    "problems"}], "rows": number of metrics-table rows, "verdict": the `Verdict` the page leads with}.
    """
    run_dirs, output_html = _checked(run_dirs, output_html, baselines)
    runs = [load_run(p, split) for p in run_dirs]
    name_runs(runs)
    table = metrics_table(runs, baselines)
    buckets = bucket_tables(runs)
    plots = _plots(runs, buckets)
    samples = sample_rows(runs, max_examples, rows_per_user)
    verdict = build_verdict(runs, table, has_baselines=bool(baselines))
    images = _write_images(plots, output_html)
    md_path = _markdown_path(output_html)
    write_text(md_path, render_markdown(runs, table, {k: p.name for k, p in images.items()}, buckets, samples,
                                        title, verdict))
    write_text(output_html, render_html(runs, table, plots, buckets, samples, title, verdict))
    return {"html": output_html, "markdown": md_path, "images": list(images.values()),
            "runs": [{"name": r.name, "path": str(r.path), "missing": list(r.missing), "problems": list(r.problems)}
                     for r in runs],
            "rows": len(table.rows), "verdict": verdict}


def _checked(run_dirs, output_html, baselines) -> tuple[list[Path], Path]:
    """The arguments as paths, refused before anything is read or written."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise UsertwinError("report: give at least one run directory")
    if baselines is not None and not isinstance(baselines, dict):
        raise UsertwinError("report: baselines must be a dict {baseline name: {metric: value}}")
    output_html = Path(output_html)
    if output_html.is_dir():
        raise UsertwinError(f"report: {output_html} is a directory; give the HTML file to write")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsertwinError("report needs matplotlib: pip install 'matplotlib>=3.7'") from None
    return run_dirs, output_html


def _plots(runs: list[Run], buckets: dict) -> dict:
    """{kind: PNG bytes} of the plots that have data and more than one bucket."""
    plots = {"loss": plot_losses(runs)}
    for kind, draw in (("history", plot_history), ("activity", plot_activity)):
        if one_bucket(buckets[kind][1], kind) is None:
            plots[kind] = draw(runs, *buckets[kind])
    return {k: v for k, v in plots.items() if v is not None}


def _write_images(plots: dict, output_html: Path) -> dict:
    """{kind: path} of the PNG files beside the page, `<stem>-<kind>.png`."""
    images = {}
    for kind, png in plots.items():
        path = output_html.with_name(f"{output_html.stem}-{kind}.png")
        with atomic_open(path, "wb") as f:
            f.write(png)
        images[kind] = path
    return images


def _markdown_path(output_html: Path) -> Path:
    md_path = output_html.with_suffix(".md")
    return output_html.with_name(output_html.name + ".md") if md_path == output_html else md_path
