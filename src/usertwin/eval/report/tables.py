"""The report's tables: the metrics table (one row per run and per baseline), its best values, the
per-bucket statistics of predictions, and how a value is written in a cell.

Which metrics lead a group of columns and which way is better come from the metric specs of
`usertwin.eval.metrics` (`METRICS`), the same ones the `usertwin evaluate` table is drawn from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from usertwin.eval import metrics as metric_specs
from usertwin.eval.metrics import activity_bucket, activity_labels, as_number, bucket_of
from usertwin.eval.report.runs import Run, history_label

# history-length buckets (the number of earlier items the target was predicted from): 0, 1-5, 6-20, 21-50, 51+
HISTORY_EDGES = (0, 5, 20, 50)
# "history" is what the run saw (`runs.history_label`); "targets" is the table's one row count
IDENTITY_COLUMNS = ("run", "ablation", "unit", "history", "targets")
SUMMARY_COLUMNS = ("val_loss_before", "val_loss_after", "best_val_loss", "steps", "epochs", "tokens_per_second",
                   "wall_seconds")
# training columns where lower is better (as is any other column named *loss); metrics say so in their specs
LOWER_BETTER_TRAINING = {"val_loss_before", "val_loss_after", "best_val_loss"}
# levels of the metrics file that are containers, not names: left out of column names when that stays unique
TRANSPARENT_KEYS = {"overall", "all"}
# evaluate's 95% intervals and its comparison with another file (usertwin.eval.intervals): not metric columns
NOT_COLUMNS = {"intervals", "against"}
_BUCKET_KEY = re.compile(r"^(\d+(-\d+|\+)?|unknown)$")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _leaves(obj, path=()):
    """(path tuple, value) of numeric (or null) leaves, skipping per-bucket sub-dicts."""
    for key, val in obj.items():
        key = str(key)
        if isinstance(val, dict):
            if key.startswith("by_") or key == "buckets" or key in NOT_COLUMNS or _BUCKET_KEY.match(key):
                continue
            yield from _leaves(val, path + (key,))
        elif is_number(val) or val is None:
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
    spec = metric_specs.spec_of(leaf)
    if spec is not None:
        return spec.direction
    return -1 if leaf in LOWER_BETTER_TRAINING or leaf.endswith("loss") else 0


ARROWS = {-1: "↓", 1: "↑", 0: ""}


def arrow(leaf: str) -> str:
    """The better side of a column: ↓ lower is better, ↑ higher is better, "" for counts and the like."""
    return ARROWS[_direction(leaf)]


def column_header(leaf: str) -> str:
    """A column's name in the table header: its metric spec's label (else the leaf itself) and its arrow."""
    spec = metric_specs.spec_of(leaf)
    name = spec.header if spec is not None else leaf
    return f"{name} {arrow(leaf)}".rstrip()


def is_count(leaf: str) -> bool:
    """Row counts (n, n_scored, n_rows, unparseable): the table shows one count column, `targets`, instead."""
    spec = metric_specs.spec_of(leaf)
    return bool(spec and spec.count) or leaf.startswith("n_") or leaf == "unparseable"


def _align_baseline(values: dict, paths: dict) -> dict:
    """A baseline's metrics placed under the runs' columns (`paths`: {column: path}), as {column: (path,
    value)}. Names shaped like the runs' (`rating.expected.rmse`, or nested dicts shaped like the metrics file) go
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
        spec = metric_specs.spec_of(sp[-1])
        if kind == "rating" and spec is not None and (spec.on_scale or spec.generated_only):
            continue  # the rating baselines predict means and never fail to parse: 0 whatever the baseline
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
    columns: list  # shown after the identity columns: no counts but `targets`, no repeated perplexity
    paths: dict  # {column: path tuple} of every column a row may hold, counts included (the verdict reads them)
    rows: list  # {"name", "label", "baseline": bool, "cells": {column: value}}


def _ordered(paths: dict) -> list:
    """Columns grouped by their parent (in order of first appearance); in each group the registered metrics
    first (in `metrics.METRICS` order), then other metrics with a direction, then counts, each in their own
    order."""
    groups: dict = {}
    for c, p in paths.items():
        groups.setdefault(p[:-1], []).append(c)
    order = metric_specs.ordered_keys()

    def rank(c):
        leaf = paths[c][-1]
        return (order.index(leaf), 0) if leaf in order else (len(order), _direction(leaf) == 0)

    return [c for cols in groups.values() for c in sorted(cols, key=rank)]


def _targets(cells: dict, paths: dict):
    """The row's count of targets: the metrics file's n_rows, else its largest n."""
    if is_number(cells.get("n_rows")):
        return cells["n_rows"]
    counts = [v for c, v in cells.items() if c in paths and paths[c][-1] == "n" and is_number(v)]
    return max(counts, default=None)


def _run_row(run: Run, flat: dict, summary_cols: list) -> dict:
    cells = {"ablation": run.config.get("ablation"), "unit": run.config.get("unit", run.summary.get("unit")),
             "history": history_label(run)}
    cells.update({name: val for name, (_, val) in flat.items()})
    cells.update({f"train.{c}": run.summary.get(c) for c in summary_cols})
    return {"name": run.name, "label": run.label, "baseline": False, "cells": cells}


def _baseline_row(name, values, paths: dict) -> dict:
    """A baseline's row; `paths` gains the columns only it has."""
    values = values if isinstance(values, dict) else {"value": values}
    aligned = _align_baseline(values, paths)
    for c, (p, _) in aligned.items():
        paths.setdefault(c, p)
    cells = {c: val for c, (_, val) in aligned.items()}
    cells["targets"] = values.get("n") if is_number(values.get("n")) else None
    fit = values.get("fit_on")  # `usertwin baselines` records what each baseline was fit on
    label = f"{name} (fit on {fit})" if isinstance(fit, str) else str(name)
    return {"name": str(name), "label": label, "baseline": True, "cells": cells}


def _scored_only_zero(path: tuple) -> bool:
    """A metric of generated text under a likelihood-scored rating (`rating.expected.unparseable_share`): 0 by
    construction, so not a column."""
    spec = metric_specs.spec_of(path[-1])
    return bool(spec and spec.generated_only) and len(path) == 3 and path[0] == "rating" and path[1] != "generated"


def _repeats_a_perplexity(c: str, table_rows: list, paths: dict) -> bool:
    """The perplexity of all rows repeats its group's where a run has one group (ratings only, say): shown
    once, in the group."""
    if paths[c] != ("perplexity",):
        return False
    others = [o for o, p in paths.items() if p[-1] == "perplexity" and o != c]
    return all(row["cells"].get(c) is None or any(row["cells"].get(o) == row["cells"][c] for o in others)
               for row in table_rows)


def metrics_table(runs: list[Run], baselines: dict | None) -> Table:
    """One row per run (identity from its config, its metrics flattened, training from its summary), then one
    per baseline."""
    summary_cols = [c for c in SUMMARY_COLUMNS if any(is_number(r.summary.get(c)) for r in runs)]
    flat = [_flat(r.metrics) for r in runs]
    paths: dict = {}
    for f in flat:
        for name, (p, _) in f.items():
            paths.setdefault(name, p)
    paths = {c: paths[c] for c in _ordered(paths)}
    paths.update({f"train.{c}": ("train", c) for c in summary_cols})
    rows = [_run_row(r, f, summary_cols) for r, f in zip(runs, flat)]
    for row in rows:
        row["cells"]["targets"] = _targets(row["cells"], paths)
    rows += [_baseline_row(name, values, paths) for name, values in (baselines or {}).items()]
    columns = [c for c in paths if not is_count(paths[c][-1]) and not _repeats_a_perplexity(c, rows, paths)
               and not _scored_only_zero(paths[c])]
    return Table(columns=columns, paths=paths, rows=rows)


def best_values(table: Table) -> dict:
    """{column: best value} for columns with a direction where one row alone holds the best value: a tie
    at the top (all equal included) names no best."""
    best = {}
    for c in table.columns:
        d = _direction(table.paths[c][-1])
        vals = [row["cells"].get(c) for row in table.rows]
        vals = [v for v in vals if is_number(v) and math.isfinite(v)]
        top = (min(vals) if d < 0 else max(vals)) if d and vals else None
        if top is not None and vals.count(top) == 1 and len(vals) >= 2:
            best[c] = top
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
    return bucket_of(n if is_number(n) else None, edges, history_labels(edges))


def bucket_stats(rows: list, key) -> dict:
    """{bucket: {"n", "loss" (per target token, rows weighted by n_tokens), "n_rated", "rmse" (of the
    expected rating)}}."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for b, group in groups.items():
        pairs = [(float(r["loss"]), float(r.get("n_tokens") or 1)) for r in group if is_number(r.get("loss"))]
        total = sum(w for _, w in pairs)
        errs = []
        for r in group:
            rating = r.get("rating") if isinstance(r.get("rating"), dict) else {}
            ref, exp = as_number(r.get("reference")), rating.get("expected")
            if ref is not None and is_number(exp):
                errs.append((float(exp) - ref) ** 2)
        out[b] = {"n": len(group), "loss": sum(loss * w for loss, w in pairs) / total if total else None,
                  "n_rated": len(errs), "rmse": math.sqrt(sum(errs) / len(errs)) if errs else None}
    return out


def bucket_tables(runs: list[Run]) -> dict:
    """{"history": (labels, {run name: stats}), "activity": (labels, {run name: stats})}."""
    hist = {r.name: bucket_stats(r.predictions, lambda row: history_bucket(row.get("history_len")))
            for r in runs if r.predictions}
    act = {r.name: bucket_stats(r.predictions, lambda row: activity_bucket(
        row.get("user_items") if is_number(row.get("user_items")) else None)) for r in runs if r.predictions}
    out = {}
    for kind, stats, labels in (("history", hist, history_labels()), ("activity", act, activity_labels())):
        if any("unknown" in s for s in stats.values()):
            labels = labels + ["unknown"]
        out[kind] = (labels, stats)
    return out
