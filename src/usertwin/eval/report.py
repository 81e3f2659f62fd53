"""`usertwin report RUN_DIR [RUN_DIR ...] -o report.html`: compare runs in one self-contained HTML file.

The HTML needs no network to open: plots are PNG images (matplotlib, Agg canvas, no pyplot state) embedded
as base64 `data:` URIs, the CSS is inline and there is no JavaScript at all (a Content-Security-Policy in the
page forbids scripts and every fetch). Beside it, `report.md` holds the same tables in Markdown with the plots
as PNG files next to it (`<stem>-loss.png`, ...), for pasting into papers and issues. Every file is written
atomically.

What it reads from a run directory (any file may be missing; the report says which):

* `config.yaml`: ablation, unit, history_strategy of the run.
* `summary.json` (written at the end of `usertwin train`): steps, validation losses, speed.
* `logs.jsonl`: train loss per step and validation loss points (a resumed run's repeated steps count once).
* `metrics.json` (`usertwin evaluate`): any nested dict; numeric leaves become dotted columns
  (`rating.expected.rmse`, `text.en.bleu`, `pick.accuracy`), with `overall`/`all` levels left out of the name
  and per-bucket sub-dicts (`by_activity`, ...) left out of the main table.
* `predictions-test.jsonl` (`usertwin predict`): per-target loss, history length, user activity, rating
  distributions; for the history-length and activity plots and the browsable sample of predictions.

Plots hold only numbers and run names (a run name that is not plain ASCII is drawn as `run N`), so no CJK
font is needed; all user text is in the HTML, escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.atomic import atomic_open, write_text
from usertwin.errors import UsertwinError
from usertwin.eval.metrics import activity_bucket, activity_labels, as_number, bucket_of

# history-length buckets (the number of earlier items the target was predicted from): 0, 1-5, 6-20, 21-50, 51+
HISTORY_EDGES = (0, 5, 20, 50)
IDENTITY_COLUMNS = ("run", "ablation", "unit", "history_strategy")
SUMMARY_COLUMNS = ("val_loss_before", "val_loss_after", "best_val_loss", "steps", "epochs", "tokens_per_second",
                   "wall_seconds")
# metric leaf names where lower (resp. higher) is better: the best value of such a column is shown in bold
LOWER_BETTER = {"rmse", "mae", "loss", "val_loss_before", "val_loss_after", "best_val_loss", "perplexity",
                "unparseable_share"}
HIGHER_BETTER = {"accuracy", "within_0.5", "bleu", "chrf", "rouge_l", "distinct_1", "distinct_2"}
# within a group of columns: these first (in this order), then other metrics, then counts
HEADLINE = ("rmse", "mae", "accuracy", "within_0.5", "unparseable_share", "bleu", "chrf", "rouge_l", "perplexity",
            "length_ratio", "distinct_1", "distinct_2", "chance")
# levels of metrics.json that are containers, not names: left out of column names when that stays unique
TRANSPARENT_KEYS = {"overall", "all"}
_BUCKET_KEY = re.compile(r"^(\d+(-\d+|\+)?|unknown)$")
HINTS = {
    "config.yaml": "not a usertwin run directory, or training never started",
    "summary.json": "training has not finished",
    "logs.jsonl": "no training logs",
    "metrics.json": "run `usertwin evaluate`",
    "predictions": "run `usertwin predict`",
}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")


# ---------------------------------------------------------------- reading run directories


@dataclass
class Run:
    path: Path
    name: str = ""
    label: str = ""  # the name drawn in plots (ASCII only)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    logs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    predictions: list = field(default_factory=list)
    predictions_file: str = ""
    missing: list = field(default_factory=list)  # file names that are not there
    problems: list = field(default_factory=list)  # files (or lines) that could not be read


def _read_json(run: Run, name: str) -> dict:
    path = run.path / name
    if not path.is_file():
        run.missing.append(name)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        run.problems.append(f"{name}: cannot read ({e})")
        return {}
    if not isinstance(data, dict):
        run.problems.append(f"{name}: not a JSON object")
        return {}
    return data


def _read_jsonl(run: Run, name: str) -> list:
    """Rows of a JSON Lines file; unreadable lines (a killed run's torn last line) are skipped and reported."""
    path = run.path / name
    rows, bad = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(lineno)
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad.append(lineno)
    except OSError as e:
        run.problems.append(f"{name}: cannot read ({e.strerror})")
        return []
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        run.problems.append(f"{name}: {len(bad)} unreadable line(s) skipped (line {shown})")
    return rows


def _read_config(run: Run) -> dict:
    import yaml

    path = run.path / "config.yaml"
    if not path.is_file():
        run.missing.append("config.yaml")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        run.problems.append(f"config.yaml: cannot read ({type(e).__name__})")
        return {}
    return data if isinstance(data, dict) else {}


def load_run(path, split: str = "test") -> Run:
    """Everything the report uses from one run directory; missing or unreadable files are noted, not fatal."""
    path = Path(path)
    if not path.is_dir():
        raise UsertwinError(f"{path}: not a run directory ({'a file' if path.exists() else 'does not exist'})")
    run = Run(path=path)
    run.config = _read_config(run)
    run.summary = _read_json(run, "summary.json")
    if (path / "logs.jsonl").is_file():
        run.logs = _read_jsonl(run, "logs.jsonl")
    else:
        run.missing.append("logs.jsonl")
    run.metrics = _read_json(run, "metrics.json")
    name = f"predictions-{split}.jsonl"
    if (path / name).is_file():
        run.predictions_file = name
        run.predictions = _read_jsonl(run, name)
    else:
        run.missing.append(name)
    return run


def _names(runs: list[Run]) -> None:
    """Directory names, made unique with parent folders where two runs share one; plot labels in ASCII."""
    depth = {id(r): 1 for r in runs}
    for _ in range(8):
        names = {id(r): "/".join(r.path.resolve().parts[-depth[id(r)]:]) for r in runs}
        dup = {n for n in names.values() if list(names.values()).count(n) > 1}
        if not dup:
            break
        for r in runs:
            if names[id(r)] in dup:
                depth[id(r)] += 1
    for i, r in enumerate(runs, 1):
        r.name = names[id(r)] or str(r.path)
        short = r.name if len(r.name) <= 40 else "..." + r.name[-37:]
        r.label = short if short.isascii() and short.isprintable() else f"run {i}"


# ---------------------------------------------------------------- the metrics table


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _leaves(obj, path=()):
    """(path tuple, value) of numeric (or null) leaves, skipping per-bucket sub-dicts."""
    for key, val in obj.items():
        key = str(key)
        if isinstance(val, dict):
            if key.startswith("by_") or key == "buckets" or _BUCKET_KEY.match(key):
                continue
            yield from _leaves(val, path + (key,))
        elif _is_number(val) or val is None:
            yield path + (key,), val


def _flat(metrics: dict) -> dict:
    """{dotted name: (path, value)}: `overall`/`all` levels are left out of the path where the name stays
    unique. The path keeps keys that hold a dot themselves (`within_0.5`) whole."""
    leaves = list(_leaves(metrics))
    short = [tuple(p for p in path if p not in TRANSPARENT_KEYS) or path for path, _ in leaves]
    out = {}
    for (path, val), sp in zip(leaves, short):
        sp = sp if short.count(sp) == 1 else path
        out[".".join(sp)] = (sp, val)
    return out


def flatten_metrics(metrics: dict) -> dict:
    """{dotted column: value} of a metrics dict, in its own order (`overall.rating.expected.rmse` ->
    `rating.expected.rmse`); per-bucket sub-dicts (`by_activity`, `1-20`, ...) are left out."""
    return {name: val for name, (_, val) in _flat(metrics).items()}


def _direction(leaf: str) -> int:
    """-1 where lower is better, 1 where higher is better, 0 for counts and the like."""
    if leaf in LOWER_BETTER or leaf.endswith("loss"):
        return -1
    return 1 if leaf in HIGHER_BETTER else 0


def _align_baseline(values: dict, paths: dict) -> dict:
    """A baseline's metrics placed under the runs' columns (`paths`: {column: path}), as {column: (path,
    value)}. Names shaped like the runs' (`rating.expected.rmse`, or nested dicts shaped like metrics.json) go
    to that column; a bare name such as `rmse` from `baselines.run_baselines` fills every rating column of that
    name (`rating.generated.rmse`, `rating.expected.rmse`, ...), for a text baseline every `text.<its
    language>` (or `text`) column of that name; other metrics get a column of their own, other counts of
    such a baseline are left out."""
    language = values.get("language") if isinstance(values.get("language"), str) else None
    flat = _flat(values)
    leaves = {sp[-1] for sp, _ in flat.values() if len(sp) == 1}
    kind = "rating" if "rmse" in leaves else "text" if (language or "bleu" in leaves) else None
    out = {}
    for name, (sp, val) in flat.items():
        hits = []
        if len(sp) == 1 and kind:
            hits = [c for c, p in paths.items() if p[-1] == sp[0] and kind in p[:-1]]
            if kind == "text" and language:
                hits = [c for c in hits if language in paths[c][:-1]] or [c for c in hits if len(paths[c]) == 2]
        for c in hits:
            out[c] = (paths[c], val)
        if hits or (len(sp) == 1 and kind and not _direction(sp[0])):
            continue  # placed; or a count (n, hyp_len) of a typed baseline that no run column shares
        out[name] = (paths.get(name, sp), val)
    return out


@dataclass
class Table:
    columns: list  # after the identity columns
    paths: dict  # {column: path tuple}: its group in the header is path[:-1], its name path[-1]
    rows: list  # {"name", "label", "baseline": bool, "cells": {column: value}}


def _ordered(paths: dict) -> list:
    """Columns grouped by their parent (in order of first appearance); in each group the headline metrics
    first (`HEADLINE` order), then other metrics with a direction, then counts, each in their own order."""
    groups: dict = {}
    for c, p in paths.items():
        groups.setdefault(p[:-1], []).append(c)

    def rank(c):
        leaf = paths[c][-1]
        return (HEADLINE.index(leaf), 0) if leaf in HEADLINE else (len(HEADLINE), _direction(leaf) == 0)

    return [c for cols in groups.values() for c in sorted(cols, key=rank)]


def metrics_table(runs: list[Run], baselines: dict | None) -> Table:
    """One row per run (identity from config.yaml, metrics.json flattened, training from summary.json), then
    one per baseline."""
    summary_cols = [c for c in SUMMARY_COLUMNS if any(_is_number(r.summary.get(c)) for r in runs)]
    paths: dict = {}
    flat = []
    for r in runs:
        f = _flat(r.metrics)
        flat.append(f)
        for name, (p, _) in f.items():
            paths.setdefault(name, p)
    paths = {c: paths[c] for c in _ordered(paths)}
    paths.update({f"train.{c}": ("train", c) for c in summary_cols})
    rows = []
    for r, f in zip(runs, flat):
        cells = {"ablation": r.config.get("ablation"), "unit": r.config.get("unit", r.summary.get("unit")),
                 "history_strategy": r.config.get("history_strategy")}
        cells.update({name: val for name, (_, val) in f.items()})
        cells.update({f"train.{c}": r.summary.get(c) for c in summary_cols})
        rows.append({"name": r.name, "label": r.label, "baseline": False, "cells": cells})
    for name, values in (baselines or {}).items():
        values = values if isinstance(values, dict) else {"value": values}
        aligned = _align_baseline(values, paths)
        for c, (p, _) in aligned.items():
            paths.setdefault(c, p)
        rows.append({"name": str(name), "label": str(name), "baseline": True,
                     "cells": {c: val for c, (_, val) in aligned.items()}})
    return Table(columns=list(paths), paths=paths, rows=rows)


def _best(table: Table) -> dict:
    """{column: best value} for columns with a direction and at least two values."""
    best = {}
    for c in table.columns:
        d = _direction(table.paths[c][-1])
        vals = [row["cells"].get(c) for row in table.rows]
        vals = [v for v in vals if _is_number(v) and math.isfinite(v)]
        if d and len(vals) >= 2 and len(set(vals)) > 1:
            best[c] = min(vals) if d < 0 else max(vals)
    return best


def fmt(x) -> str:
    if x is None or x == "":
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == int(x) and abs(x) >= 1000:
            return str(int(x))
        if abs(x) >= 100:
            return f"{x:.1f}"
        return f"{x:.2f}" if abs(x) >= 10 else f"{x:.4f}"
    return str(x)


# ---------------------------------------------------------------- predictions by bucket


def history_labels(edges=HISTORY_EDGES) -> list[str]:
    """(0, 5, 20, 50) -> 0, 1-5, 6-20, 21-50, 51+."""
    lows = [0] + [e + 1 for e in edges]
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in zip(lows, edges)] + [f"{lows[-1]}+"]


def history_bucket(n, edges=HISTORY_EDGES) -> str:
    return bucket_of(n if _is_number(n) else None, edges, history_labels(edges))


def _bucket_stats(rows: list, key) -> dict:
    """{bucket: {"n", "loss" (per target token, rows weighted by n_tokens), "n_rated", "rmse" (of the
    expected rating)}}."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for b, group in groups.items():
        pairs = [(float(r["loss"]), float(r.get("n_tokens") or 1)) for r in group if _is_number(r.get("loss"))]
        total = sum(w for _, w in pairs)
        errs = []
        for r in group:
            rating = r.get("rating") if isinstance(r.get("rating"), dict) else {}
            ref, exp = as_number(r.get("reference")), rating.get("expected")
            if ref is not None and _is_number(exp):
                errs.append((float(exp) - ref) ** 2)
        out[b] = {"n": len(group), "loss": sum(loss * w for loss, w in pairs) / total if total else None,
                  "n_rated": len(errs), "rmse": math.sqrt(sum(errs) / len(errs)) if errs else None}
    return out


def bucket_tables(runs: list[Run]) -> dict:
    """{"history": (labels, {run name: stats}), "activity": (labels, {run name: stats})}."""
    hist = {r.name: _bucket_stats(r.predictions, lambda row: history_bucket(row.get("history_len")))
            for r in runs if r.predictions}
    act = {r.name: _bucket_stats(r.predictions, lambda row: activity_bucket(
        row.get("user_items") if _is_number(row.get("user_items")) else None)) for r in runs if r.predictions}
    out = {}
    for kind, stats, labels in (("history", hist, history_labels()), ("activity", act, activity_labels())):
        if any("unknown" in s for s in stats.values()):
            labels = labels + ["unknown"]
        out[kind] = (labels, stats)
    return out


# ---------------------------------------------------------------- plots


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


def _loss_series(logs: list) -> tuple[list, list]:
    """(train [(step, loss)], val [(step, val_loss)]); a step logged twice (a resumed run) keeps its last row."""
    train, val = {}, {}
    for row in logs:
        step = row.get("step")
        if not _is_number(step):
            continue
        if row.get("event") in ("eval", "eval_start") or ("val_loss" in row and "loss" not in row):
            if _is_number(row.get("val_loss")) and math.isfinite(row["val_loss"]):
                val[step] = row["val_loss"]
        elif _is_number(row.get("loss")) and math.isfinite(row["loss"]):
            train[step] = row["loss"]
    return sorted(train.items()), sorted(val.items())


def plot_losses(runs: list[Run]) -> bytes | None:
    series = [(i, r, *_loss_series(r.logs)) for i, r in enumerate(runs)]
    series = [s for s in series if s[2] or s[3]]
    if not series:
        return None
    fig, (ax,) = _figure(1)
    for i, r, train, val in series:
        if train:
            ax.plot([s for s, _ in train], [v for _, v in train], color=_color(i), lw=1.4, label=f"{r.label} train")
        if val:
            ax.plot([s for s, _ in val], [v for _, v in val], color=_color(i), lw=1, ls="--", marker="o", ms=5,
                    label=f"{r.label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def _panels(stats: dict) -> list[tuple[str, str]]:
    panels = [("loss", "mean loss per target token")]
    if any(b.get("rmse") is not None for s in stats.values() for b in s.values()):
        panels.append(("rmse", "RMSE of the expected rating"))
    return panels


def plot_history(runs: list[Run], labels: list, stats: dict) -> bytes | None:
    if not stats:
        return None
    panels = _panels(stats)
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
    panels = _panels(stats)
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


# ---------------------------------------------------------------- samples of predictions


def sample_rows(runs: list[Run], max_examples: int, rows_per_user: int) -> dict:
    """{run name: [(user, [rows])]}: up to `max_examples` users per run, preferring the same users in every
    run (the first run's users first), and each user's first `rows_per_user` targets."""
    order: list = []
    seen = set()
    for r in runs:
        for row in r.predictions:
            u = str(row.get("user"))
            if u not in seen:
                seen.add(u)
                order.append(u)
    out = {}
    for r in runs:
        by_user: dict = {}
        for row in r.predictions:
            by_user.setdefault(str(row.get("user")), []).append(row)
        users = [u for u in order if u in by_user][:max(0, max_examples)]
        key = lambda row: row.get("target_index") if _is_number(row.get("target_index")) else 0  # noqa: E731
        out[r.name] = [(u, sorted(by_user[u], key=key)[:rows_per_user]) for u in users]
    return out


def _prediction_texts(row: dict) -> list[str]:
    preds = row.get("predictions")
    if isinstance(preds, str):
        return [preds]
    return [str(p) for p in preds] if isinstance(preds, list) else []


# ---------------------------------------------------------------- HTML

E = html.escape

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC","PingFang SC",
"Microsoft YaHei",sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1.05rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .45rem;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.baseline td{background:#fbf6e9;font-style:italic}
.tag{font-size:.7rem;font-style:normal;background:#c9a227;color:#fff;border-radius:3px;padding:0 .3rem;margin-left:.3rem}
td.best{font-weight:700}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#8a4b00}.muted{color:#777}
details{margin:.3rem 0}summary{cursor:pointer}
td.text{max-width:38rem;white-space:pre-wrap;word-break:break-word}
.dist{display:flex;gap:2px;align-items:flex-end;font-size:.65rem;text-align:center}
.dist .col{width:1.7rem}.dist .track{height:2.4rem;display:flex;flex-direction:column;justify-content:flex-end}
.dist .bar{background:#4a7fb5;min-height:1px}.dist .ref{font-weight:700;color:#b03a2e}
.dist .ref .bar{background:#b03a2e}.small{font-size:.75rem}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _cell(value, best=None, numeric=True) -> str:
    cls = "num" + (" best" if best is not None and value == best else "") if numeric else ""
    return f'<td class="{cls}">{E(fmt(value))}</td>' if cls else f"<td>{E(fmt(value))}</td>"


def _html_metrics(table: Table) -> str:
    best = _best(table)
    groups = []  # (group, [columns]) of consecutive columns that share a prefix
    for c in table.columns:
        g = ".".join(table.paths[c][:-1]) or "all"
        if groups and groups[-1][0] == g:
            groups[-1][1].append(c)
        else:
            groups.append((g, [c]))
    head1 = "".join(f'<th rowspan="2">{E(c.replace("_", " "))}</th>' for c in IDENTITY_COLUMNS)
    head1 += "".join(f'<th colspan="{len(cs)}">{E(g)}</th>' for g, cs in groups)
    head2 = "".join(f'<th title="{E(c)}">{E(table.paths[c][-1])}</th>' for c in table.columns)
    body = []
    for row in table.rows:
        cells = row["cells"]
        name = E(row["name"])
        if row["baseline"]:
            name += '<span class="tag">baseline</span>'
        elif row["label"] != row["name"]:
            name += f' <span class="muted">({E(row["label"])} in plots)</span>'
        tds = f"<td>{name}</td>" + "".join(_cell(cells.get(c), numeric=False) for c in IDENTITY_COLUMNS[1:])
        tds += "".join(_cell(cells.get(c), best.get(c)) for c in table.columns)
        body.append(f'<tr class="{"baseline" if row["baseline"] else "run"}">{tds}</tr>')
    return (f'<div class="scroll"><table id="metrics"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _html_buckets(labels: list, stats: dict, key: str, what: str) -> str:
    head = "".join(f"<th>{E(b)}</th>" for b in labels)
    body = []
    for name, s in stats.items():
        tds = []
        for b in labels:
            v = s.get(b, {})
            n = v.get("n_rated" if key == "rmse" else "n", 0)
            tds.append(f'<td class="num">{E(fmt(v.get(key)))} <span class="muted">({n})</span></td>' if n else
                       '<td class="num muted">–</td>')
        body.append(f"<tr><td>{E(name)}</td>{''.join(tds)}</tr>")
    return (f'<div class="scroll"><table class="buckets"><thead><tr><th>{E(what)} (targets)</th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def _img(png: bytes | None, alt: str, none: str) -> str:
    if png is None:
        return f'<p class="note">{E(none)}</p>'
    return f'<p><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{E(alt)}"></p>'


def _num(x) -> str:
    """A scale value or probability, short: 4.0 -> 4, 3.5 -> 3.5, 0.123456 -> 0.123."""
    return f"{x:.3g}" if _is_number(x) else str(x)


def _dist_html(rating: dict, reference) -> str:
    """The rating distribution as a small column chart (CSS only; the reference rating in red), with the
    probabilities in the tooltip, and the expected / most likely rating below."""
    scale, probs = rating.get("scale"), rating.get("probs")
    parts = []
    if isinstance(scale, list) and isinstance(probs, list) and len(scale) == len(probs) and scale:
        ref = as_number(reference)
        top = max((p for p in probs if _is_number(p)), default=0) or 1
        cols = []
        for v, p in zip(scale, probs):
            p = p if _is_number(p) else 0.0
            is_ref = ref is not None and as_number(v) == ref
            cols.append(f'<div class="col{" ref" if is_ref else ""}" title="{E(_num(v))}: {p:.3f}">'
                        f'<div class="track"><div class="bar" style="height:{100 * p / top:.0f}%"></div></div>'
                        f"<div>{E(_num(v))}</div></div>")
        parts.append(f'<div class="dist">{"".join(cols)}</div>')
    extra = [f"{k.replace('_', ' ')} {_num(rating.get(k))}" for k in ("expected", "most_likely") if k in rating]
    if extra:
        parts.append(f'<div class="muted small">{E(", ".join(extra))}</div>')
    return "".join(parts)


def _html_samples(run: Run, users: list) -> str:
    if not run.predictions_file:
        return '<p class="note">no predictions (run `usertwin predict`)</p>'
    if not users:
        return f'<p class="note">{"no users asked for" if run.predictions else "the predictions file has no rows"}</p>'
    out = []
    for user, rows in users:
        trs = []
        for row in rows:
            preds = _prediction_texts(row)
            if len(preds) > 1:  # several samples: numbered
                pred = "".join(f'<div><span class="muted">{k}.</span> {E(p)}</div>' for k, p in enumerate(preds, 1))
            else:
                pred = "".join(f"<div>{E(p)}</div>" for p in preds) or '<span class="muted">(not generated)</span>'
            extra = []
            if isinstance(row.get("rating"), dict):
                extra.append(_dist_html(row["rating"], row.get("reference")))
            pick = row.get("pick")
            if isinstance(pick, dict):
                extra.append(f'<div class="muted">picked the real one among {E(fmt(pick.get("k")))} distractors: '
                             f'{E(fmt(pick.get("correct")))}</div>')
            trs.append(f'<tr><td class="num">{E(fmt(row.get("target_index")))}</td>'
                       f'<td class="num">{E(fmt(row.get("history_len")))}</td>'
                       f'<td class="text">{E(str(row.get("item") or ""))}</td>'
                       f'<td class="text">{E(str(row.get("reference") or ""))}</td>'
                       f'<td class="text">{pred}</td><td>{"".join(extra)}</td>'
                       f'<td class="num">{E(fmt(row.get("loss")))}</td></tr>')
        n_items = rows[0].get("user_items") if rows else None
        summary = f"user {user}" + (f" ({fmt(n_items)} items in all)" if n_items is not None else "")
        out.append(f"<details><summary>{E(summary)}</summary><div class=\"scroll\"><table class=\"samples\">"
                   "<thead><tr><th>target</th><th>history</th><th>item</th><th>reference</th><th>prediction</th>"
                   f"<th>rating / pick</th><th>loss</th></tr></thead><tbody>{''.join(trs)}</tbody></table>"
                   "</div></details>")
    return "".join(out)


def _run_notes(run: Run) -> list[str]:
    notes = []
    for name in run.missing:
        hint = HINTS["predictions" if name.startswith("predictions") else name]
        notes.append(f"missing {name} ({hint})")
    return notes + run.problems


def render_html(runs, table, plots, buckets, samples, title) -> str:
    n_base = sum(row["baseline"] for row in table.rows)
    counts = f"{len(runs)} run(s)" + (f", {n_base} baseline(s)" if n_base else "")
    parts = [f"<h1>{E(title)}</h1>",
             f'<p class="muted">{counts}. Best value of each lower/higher-is-better column in bold. '
             "Losses are per target token.</p>",
             "<h2>Runs</h2><ul>"]
    for r in runs:
        notes = _run_notes(r)
        note = f' — <span class="note">{E("; ".join(notes))}</span>' if notes else ""
        parts.append(f"<li><b>{E(r.name)}</b> <span class=\"muted\">{E(str(r.path))}</span>{note}</li>")
    parts.append("</ul><h2>Metrics</h2>")
    parts.append(_html_metrics(table))
    parts.append("<h2>Training and validation loss</h2>")
    parts.append(_img(plots.get("loss"), "training and validation loss", "no run has training logs (logs.jsonl)"))
    for key, title, what in (("history", "Metrics by history length", "history length"),
                             ("activity", "Metrics by user activity", "user activity")):
        labels, stats = buckets[key]
        parts.append(f"<h2>{title}</h2>")
        parts.append(_img(plots.get(key), f"loss by {what}", "no run has predictions"))
        if stats:
            parts.append(_html_buckets(labels, stats, "loss", f"loss by {what}"))
            if len(_panels(stats)) > 1:
                parts.append(_html_buckets(labels, stats, "rmse", f"expected-rating RMSE by {what}"))
    parts.append("<h2>Predictions next to the real continuation</h2>")
    for r in runs:
        parts.append(f"<h3>{E(r.name)}</h3>")
        parts.append(_html_samples(r, samples.get(r.name, [])))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{E(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------- Markdown


def _md(text, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    if limit and len(text) > limit:
        text = text[:limit - 1] + "…"
    return E(text, quote=False).replace("|", "\\|")


def _md_table(header: list, lines: list) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _md_metrics(table: Table) -> str:
    best = _best(table)
    lines = []
    for row in table.rows:
        cells = row["cells"]
        name = f"*{_md(row['name'])}* (baseline)" if row["baseline"] else _md(row["name"])
        line = [name] + [_md(fmt(cells.get(c))) for c in IDENTITY_COLUMNS[1:]]
        for c in table.columns:
            v = _md(fmt(cells.get(c)))
            line.append(f"**{v}**" if c in best and cells.get(c) == best[c] else v)
        lines.append(line)
    return _md_table(list(IDENTITY_COLUMNS) + [_md(c) for c in table.columns], lines)


def _md_buckets(labels, stats, key, what) -> str:
    lines = []
    for name, s in stats.items():
        line = [_md(name)]
        for b in labels:
            v = s.get(b, {})
            n = v.get("n_rated" if key == "rmse" else "n", 0)
            line.append(f"{fmt(v.get(key))} ({n})" if n else "–")
        lines.append(line)
    return _md_table([f"{what} (targets)"] + [_md(b) for b in labels], lines)


def render_markdown(runs, table, images, buckets, samples, title) -> str:
    out = [f"# {_md(title)}", "", "Best value of each lower/higher-is-better column in bold. "
           "Losses are per target token.", "", "## Runs", ""]
    for r in runs:
        notes = _run_notes(r)
        out.append(f"- **{_md(r.name)}** `{r.path}`" + (f" — {_md('; '.join(notes))}" if notes else ""))
    out += ["", "## Metrics", "", _md_metrics(table), "", "## Training and validation loss", ""]
    out.append(f"![training and validation loss]({images['loss']})" if "loss" in images else
               "no run has training logs (logs.jsonl)")
    for kind, what in (("history", "history length"), ("activity", "user activity")):
        labels, stats = buckets[kind]
        out += ["", f"## Metrics by {what}", ""]
        if kind not in images:
            out.append("no run has predictions")
            continue
        out += [f"![loss by {what}]({images[kind]})", "", _md_buckets(labels, stats, "loss", f"loss by {what}")]
        if len(_panels(stats)) > 1:
            out += ["", _md_buckets(labels, stats, "rmse", f"expected-rating RMSE by {what}")]
    out += ["", "## Predictions next to the real continuation"]
    for r in runs:
        out += ["", f"### {_md(r.name)}", ""]
        users = samples.get(r.name, [])
        if not users:
            out.append("no predictions" if not r.predictions_file else
                       "the predictions file has no rows" if not r.predictions else "no users asked for")
            continue
        lines = []
        for user, rows in users:
            for row in rows:
                preds = _prediction_texts(row)
                rating = row.get("rating") if isinstance(row.get("rating"), dict) else {}
                lines.append([_md(user), _md(fmt(row.get("history_len"))), _md(row.get("item") or "", 120),
                              _md(row.get("reference") or "", 300), _md(preds[0] if preds else "–", 300),
                              _md(fmt(rating.get("expected")) if rating else "–"), _md(fmt(row.get("loss")))])
        out.append(_md_table(["user", "history", "item", "reference", "prediction", "expected rating", "loss"],
                             lines))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- entry point


def build_report(run_dirs: list[Path], output_html: Path, baselines: dict | None = None, max_examples: int = 5,
                 *, rows_per_user: int = 3, split: str = "test", title: str = "usertwin report") -> dict:
    """Write `output_html` (self-contained) and `<stem>.md` beside it, with the plots as `<stem>-loss.png`,
    `<stem>-history.png`, `<stem>-activity.png` (those that have data).

    `baselines`: `{name: {metric: value}}`, one table row each, marked as a baseline (see `_align_baseline`
    for how metric names meet the runs' columns). `max_examples`: users shown per run in the sample of
    predictions, `rows_per_user` targets each. `split`: which `predictions-SPLIT.jsonl` to read.

    Returns {"html": Path, "markdown": Path, "images": [Path], "runs": [{"name", "path", "missing",
    "problems"}], "rows": number of metrics-table rows}.
    """
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
    runs = [load_run(p, split) for p in run_dirs]
    _names(runs)
    table = metrics_table(runs, baselines)
    buckets = bucket_tables(runs)
    plots = {"loss": plot_losses(runs), "history": plot_history(runs, *buckets["history"]),
             "activity": plot_activity(runs, *buckets["activity"])}
    plots = {k: v for k, v in plots.items() if v is not None}
    samples = sample_rows(runs, max_examples, rows_per_user)

    stem = output_html.stem
    images = {}
    for kind, png in plots.items():
        path = output_html.with_name(f"{stem}-{kind}.png")
        with atomic_open(path, "wb") as f:
            f.write(png)
        images[kind] = path
    md_path = output_html.with_suffix(".md")
    if md_path == output_html:
        md_path = output_html.with_name(output_html.name + ".md")
    write_text(md_path, render_markdown(runs, table, {k: p.name for k, p in images.items()}, buckets, samples,
                                        title))
    write_text(output_html, render_html(runs, table, plots, buckets, samples, title))
    return {"html": output_html, "markdown": md_path, "images": list(images.values()),
            "runs": [{"name": r.name, "path": str(r.path), "missing": list(r.missing), "problems": list(r.problems)}
                     for r in runs],
            "rows": len(table.rows)}
