"""The report's verdict: is the twin any good? Each run's headline metrics (the `headline` metric specs of
`usertwin.eval.metrics`) against the best baseline on the same targets, or against chance where a spec says
so (`versus`), then the ablations: runs that differ only in whether history reached the prompt.

Everything is read from the metrics table (`tables.Table`), so the verdict and the full table cannot disagree.
Where both sides' per-target rows are at hand (a run's predictions; a baseline's rows from `usertwin baselines
--run RUN`, RUN/baselines-SPLIT/NAME.jsonl; the other run of an ablation pair), a comparison also carries the
95% interval of its difference from resampling users (`usertwin.eval.intervals`), and says whether the
difference is beyond noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from usertwin.eval import intervals as paired_intervals
from usertwin.eval import metrics as metric_specs
from usertwin.eval.report.runs import Run, parts_seen, read_baseline_rows
from usertwin.eval.report.tables import Table, fmt, is_number

# config keys that name where or how a run was started, not what it learned from
RUN_KEYS = {"output_dir", "resume", "overwrite", "wandb_project", "wandb_run_name", "debug"}
# config keys that only say what the prompt showed: an ablation pair may differ in these
PROMPT_KEYS = {"ablation", "use_profile", "use_history", "use_context", "history_strategy"}
HOW_TO_GET_BASELINES = ("run `usertwin baselines --run RUN` (it writes RUN/baselines.json, which `usertwin report` "
                        "reads from the first run) or pass `--baselines FILE`")


@dataclass
class Comparison:
    run: str
    metric: str  # what a reader calls it: "expected-rating RMSE", "chrF [zh]"
    value: float
    versus: str  # the best baseline's name, "chance", or the other run of an ablation pair
    versus_value: float | None
    direction: int  # -1 lower is better, 1 higher is better
    note: str = ""  # why the two numbers are not quite comparable (different targets)
    path: tuple = ()  # the metric's path in the metrics file: ("rating", "expected", "rmse")
    interval: list | None = None  # 95% interval of the difference, from resampling users (paired rows)

    @property
    def difference(self) -> float | None:
        return None if self.versus_value is None else self.value - self.versus_value

    @property
    def relative(self) -> float | None:
        """The difference as a share of the reference's size; None where the reference is 0 or missing."""
        d = self.difference
        return None if d is None or not self.versus_value else d / abs(self.versus_value)

    @property
    def word(self) -> str:
        """better / worse by the metric's direction; "tie" when the difference's interval holds 0 (a reader
        must not take noise for a win), "same" when the two are equal."""
        d = self.difference
        if d is None or not self.direction:
            return ""
        if d == 0:
            return "same"
        return "tie" if self.noise == "within noise" else "better" if d * self.direction > 0 else "worse"

    @property
    def noise(self) -> str:
        """'beyond noise' when the difference's interval leaves out 0, 'within noise' when it holds it."""
        if not self.interval:
            return ""
        return "within noise" if self.interval[0] <= 0 <= self.interval[1] else "beyond noise"

    @property
    def side(self) -> str:
        d = self.difference
        return "" if not d else "lower" if d < 0 else "higher"


@dataclass
class Verdict:
    sentence: str
    rows: list  # [Comparison] against the best baseline (or chance)
    ablations: list  # [(with-history run name, no-history run name, [Comparison])]


def metric_name(path: tuple, spec) -> str:
    """("rating", "expected", "rmse") -> "expected-rating RMSE"; ("pick", "accuracy") -> "pick-the-real-one
    accuracy"; ("text", "zh", "chrf") -> "chrF [zh]"."""
    if path[0] == "rating":
        return f"{path[1].replace('_', ' ')}-rating {spec.header}"
    if path[0] == "pick":
        return f"pick-the-real-one {spec.header}"
    return spec.header + (f" [{path[1]}]" if len(path) == 3 else "")


def _headline_columns(table: Table) -> list:
    """(column, path, spec) of the headline metrics, in the table's order."""
    out = []
    for c in table.paths:
        spec = metric_specs.headline_spec(table.paths[c])
        if spec is not None:
            out.append((c, table.paths[c], spec))
    return sorted(out, key=lambda t: metric_specs.METRICS.index(t[2]))  # the specs' order: ratings first


def _sibling(table: Table, path: tuple, key: str) -> str | None:
    """The column of the same group with leaf `key` (its n, its chance)."""
    want = path[:-1] + (key,)
    return next((c for c, p in table.paths.items() if p == want), None)


def _targets_note(table: Table, path: tuple, cells: dict, other: dict, other_name: str) -> str:
    n_col = _sibling(table, path, "n")
    n, m = (cells.get(n_col), other.get(n_col)) if n_col else (None, None)
    if is_number(n) and is_number(m) and n != m:
        return f"not the same targets: {fmt(n)} here, {fmt(m)} for {other_name}"
    return ""


def _against_baselines(table: Table, row: dict, column: str, path: tuple, spec) -> Comparison | None:
    value = row["cells"].get(column)
    if not _finite(value):
        return None
    name = metric_name(path, spec)
    bases = [b for b in table.rows if b["baseline"] and _finite(b["cells"].get(column))]
    if bases:
        pick = min if spec.direction < 0 else max
        best = pick(bases, key=lambda b: b["cells"][column])
        return Comparison(row["name"], name, value, best["name"], best["cells"][column], spec.direction,
                          _targets_note(table, path, row["cells"], best["cells"], best["name"]), path)
    versus = _sibling(table, path, spec.versus) if spec.versus else None
    if versus and _finite(row["cells"].get(versus)):
        return Comparison(row["name"], name, value, spec.versus, row["cells"][versus], spec.direction, path=path)
    return Comparison(row["name"], name, value, "", None, spec.direction, path=path)


def _finite(x) -> bool:
    return is_number(x) and math.isfinite(x)


def value_text(x) -> str:
    """Four significant digits, trailing zeros kept so that a column of values lines up (1.200, 0.3697)."""
    if not _finite(x):
        return fmt(x)
    return fmt(x) if abs(x) >= 1000 else f"{x:#.4g}".rstrip(".")


def difference_text(x) -> str:
    return "–" if x is None else "+0" if x == 0 else f"{x:+#.3g}".rstrip(".")


def relative_text(x) -> str:
    return "–" if x is None else f"{x * 100:+.1f}%"


def _pct(x) -> str:
    return "–" if x is None else f"{abs(x) * 100:.1f}%"


def _clause(c: Comparison) -> str:
    what = "chance" if c.versus == "chance" else f"the best baseline ({c.versus})"
    rel = f", {_pct(c.relative)} {c.side}" if c.relative is not None and c.side else ""
    note = f" ({c.note})" if c.note else ""
    verb = {"same": "is level with", "tie": "is tied with"}.get(c.word, f"is {c.word} than")
    sure = f", {c.noise} (95% interval of the difference {_interval_range(c)})" if c.interval else ""
    return (f"{c.run} {verb} {what} on {c.metric}: {value_text(c.value)} vs "
            f"{value_text(c.versus_value)}{rel}{sure}{note}")


def _sentence(runs: list[Run], rows: list, has_baselines: bool) -> str:
    clauses = []
    for run in runs:
        mine = [c for c in rows if c.run == run.name]
        lead = next((c for c in mine if c.word and c.versus != "chance"), None) \
            or next((c for c in mine if c.word), None)
        if lead is not None:
            clauses.append(_clause(lead))
        elif not mine:
            clauses.append(f"{run.name} has no headline metric yet (run `usertwin evaluate`)")
    text = "; ".join(clauses)
    if not has_baselines:
        missing = f"No baselines given, so this page cannot say whether the twin beats them: {HOW_TO_GET_BASELINES}"
        return f"{missing}." + (f" Meanwhile: {text}." if text else "")
    return f"{text}." if text else "No run has a headline metric that a baseline also has."


def _comparable(a: Run, b: Run) -> bool:
    """Runs that differ only in whether history reached the prompt (same data, model, training, profile and
    context)."""
    pa, pb = parts_seen(a.config), parts_seen(b.config)
    if pa is None or pb is None or pa[1] == pb[1] or (pa[0], pa[2]) != (pb[0], pb[2]):
        return False
    skip = RUN_KEYS | PROMPT_KEYS
    keys = (set(a.config) | set(b.config)) - skip
    return all(a.config.get(k) == b.config.get(k) for k in keys)


def _ablation_pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(with history, no history) pairs, in run order."""
    pairs = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if _comparable(a, b):
                pairs.append((a, b) if parts_seen(a.config)[1] else (b, a))
    return pairs


def _ablation(table: Table, with_h: Run, without: Run) -> list:
    rows = {r["name"]: r for r in table.rows if not r["baseline"]}
    a, b = rows[with_h.name]["cells"], rows[without.name]["cells"]
    out = []
    for column, path, spec in _headline_columns(table):
        if _finite(a.get(column)) and _finite(b.get(column)):
            out.append(Comparison(with_h.name, metric_name(path, spec), a[column], without.name, b[column],
                                  spec.direction, _targets_note(table, path, a, b, without.name), path))
    return out


def build_verdict(runs: list[Run], table: Table, has_baselines: bool) -> Verdict:
    rows = []
    for row in table.rows:
        if row["baseline"]:
            continue
        for column, path, spec in _headline_columns(table):
            c = _against_baselines(table, row, column, path, spec)
            if c is not None:
                rows.append(c)
    ablations = [(a.name, b.name, _ablation(table, a, b)) for a, b in _ablation_pairs(runs)]
    _add_intervals(runs, rows, ablations)
    return Verdict(_sentence(runs, rows, has_baselines), rows, ablations)


def _add_intervals(runs: list[Run], rows: list, ablations: list) -> None:
    """Each comparison's 95% interval of the difference, where both sides' per-target rows are at hand."""
    by_name = {r.name: r for r in runs}
    done: dict = {}  # (run, other side) -> paired(...): one resampling per pair, whatever the metrics

    def attach(c: Comparison, other: str, other_rows) -> None:
        if (c.run, other) not in done:
            rows_a, rows_b = by_name[c.run].predictions, other_rows()
            done[c.run, other] = (paired_intervals.paired(rows_a, rows_b) if rows_a and rows_b else None) or {}
        key = "_".join(c.path)  # ("text", "zh", "chrf") -> the intervals' "text_zh_chrf"
        c.interval = (done[c.run, other].get(key) or {}).get("ci95")

    for c in rows:
        if c.versus == "chance":
            c.interval = _against_chance(by_name[c.run], c)
        elif c.versus:
            attach(c, f"baseline {c.versus}", lambda c=c: read_baseline_rows(by_name[c.run], c.versus))
    for _, b, comps in ablations:
        for c in comps:
            attach(c, b, lambda b=b: by_name[b].predictions)


def _against_chance(run: Run, c: Comparison) -> list | None:
    """Chance is a number, not a sample: the difference's interval is evaluate's interval of the value
    (metrics.json's `intervals`, resampled over users) shifted by it."""
    ci = ((run.metrics.get("intervals") or {}).get("_".join(c.path)) or {}).get("ci95")
    if not ci or c.versus_value is None:
        return None
    return [ci[0] - c.versus_value, ci[1] - c.versus_value]


def _interval_range(c: Comparison) -> str:
    return f"{difference_text(c.interval[0])} to {difference_text(c.interval[1])}"


def interval_text(c: Comparison) -> str:
    """'-0.167 to +0.052: within noise', or '–' without an interval."""
    return f"{_interval_range(c)}: {c.noise}" if c.interval else "–"


def ablation_sentence(with_name: str, without_name: str, comparisons: list) -> str:
    """"with history vs no history: A vs B — history is better on 3 of 4 headline metrics"."""
    better = sum(c.word == "better" for c in comparisons)
    scored = sum(bool(c.word) for c in comparisons)
    ties = sum(c.word == "tie" for c in comparisons)
    tied = f", tied (within noise) on {ties}" if ties else ""
    return (f"with history vs no history: {with_name} vs {without_name} — history is better on {better} of "
            f"{scored} headline metric(s){tied}")

