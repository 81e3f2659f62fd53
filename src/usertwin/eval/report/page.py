"""The report as pages: one self-contained HTML file (inline CSS, plots as `data:` URIs, no script, and a
Content-Security-Policy that forbids scripts and every fetch) and the same tables in Markdown. All user text
is escaped here; the plots hold none."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

from usertwin.eval.metrics import DEFAULT_SCALE, as_number, parse_rating
from usertwin.eval.report.plots import bucket_panels, one_bucket
from usertwin.eval.report.runs import Run, history_label
from usertwin.eval.report.tables import (
    IDENTITY_COLUMNS,
    Table,
    arrow,
    best_values,
    column_header,
    fmt,
    is_number,
)
from usertwin.eval.report.verdict import (
    Verdict,
    ablation_sentence,
    difference_text,
    interval_text,
    relative_text,
    value_text,
)
from usertwin.rundir import RunDir

NO_LOGS = f"no run has training logs ({RunDir(Path()).logs.name})"


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
        key = lambda row: row.get("target_index") if is_number(row.get("target_index")) else 0  # noqa: E731
        out[r.name] = [(u, sorted(by_user[u], key=key)[:rows_per_user]) for u in users]
    return out


def _prediction_texts(row: dict) -> list[str]:
    preds = row.get("predictions")
    if isinstance(preds, str):
        return [preds]
    return [str(p) for p in preds] if isinstance(preds, list) else []


def rating_errors(row: dict) -> dict | None:
    """{"expected": |expected - reference|, "generated": |generated - reference| or None when unparseable or
    not generated, "generated_text"} of a rating row; None for a text row. A rating's loss says how surprised
    the model was by the reference's tokens, not how far off its rating is, so rating rows show the error."""
    rating = row.get("rating") if isinstance(row.get("rating"), dict) else None
    ref = as_number(row.get("reference"))
    if rating is None or ref is None:
        return None
    exp = rating.get("expected")
    preds = _prediction_texts(row)
    gen = parse_rating(preds[0], rating.get("scale") or DEFAULT_SCALE) if preds else None
    return {"expected": abs(float(exp) - ref) if is_number(exp) else None,
            "generated": None if gen is None else abs(gen - ref), "generated_text": preds[0] if preds else None}


def error_text(row: dict) -> str:
    """The sample's last column: rating errors for a rating row, loss and perplexity for a text row."""
    errs = rating_errors(row)
    if errs is not None:
        gen = ("not generated" if errs["generated_text"] is None else "unparseable" if errs["generated"] is None
               else _num(errs["generated"]))
        return f"expected off by {_num(errs['expected'])}; generated off by {gen}"
    loss = row.get("loss")
    if not is_number(loss):
        return "–"
    return f"loss {fmt(loss)}, perplexity {fmt(math.exp(loss))}" if loss < 50 else f"loss {fmt(loss)}"


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
td.best{font-weight:700}#metrics th{white-space:nowrap}
p.verdict{font-size:1.05rem;background:#f4f8fb;border-left:4px solid #4a7fb5;padding:.5rem .8rem}
td.better{color:#17692f;font-weight:600}td.worse{color:#a12a1f;font-weight:600}
details.full>summary{font-size:1.25rem;font-weight:600;margin-top:2rem}
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
    """The full table: identity columns, then the metrics under their group (`rating · expected`), one row
    count (`targets`), arrows for the better side, bold for a column's single best value."""
    best = best_values(table)
    groups = []  # (group, [columns]) of consecutive columns that share a prefix
    for c in table.columns:
        g = " · ".join(table.paths[c][:-1]) or "all rows"
        if groups and groups[-1][0] == g:
            groups[-1][1].append(c)
        else:
            groups.append((g, [c]))
    head1 = "".join(f'<th rowspan="2">{E(c.replace("_", " "))}</th>' for c in IDENTITY_COLUMNS)
    head1 += "".join(f'<th colspan="{len(cs)}">{E(g)}</th>' for g, cs in groups)
    head2 = "".join(f'<th title="{E(c)}">{E(column_header(table.paths[c][-1]))}</th>' for c in table.columns)
    body = []
    for row in table.rows:
        cells = row["cells"]
        name = E(row["name"])
        if row["baseline"]:
            name += '<span class="tag">baseline</span>'
        elif row["label"] != row["name"]:
            name += f' <span class="muted">({E(row["label"])} in plots)</span>'
        tds = f"<td>{name}</td>" + "".join(_cell(cells.get(c), numeric=c == "targets") for c in IDENTITY_COLUMNS[1:])
        tds += "".join(_cell(cells.get(c), best.get(c)) for c in table.columns)
        body.append(f'<tr class="{"baseline" if row["baseline"] else "run"}">{tds}</tr>')
    return (f'<div class="scroll"><table id="metrics"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


# ---------------------------------------------------------------- the verdict

VERDICT_HEAD = ("run", "history", "metric", "value", "against", "its value", "difference", "relative",
                "better or worse")
ABLATION_HEAD = ("metric", "with history", "no history", "difference", "relative", "history is")


INTERVAL_HEAD = "95% interval of the difference"


def _with_interval(head_or_cells, interval) -> list:
    """The interval's column goes just before the last (the coloured word), and only into tables where some
    comparison has one (`interval` is None for the others' cells: shown as '–')."""
    items = list(head_or_cells)
    return items[:-1] + [interval] + items[-1:]


def _sure(comps) -> bool:
    return any(c.interval for c in comps)


def _verdict_cells(c, history: dict, sure: bool = False) -> list[str]:
    against = c.versus or "no baseline has it"
    cells = [c.run, history.get(c.run, "–"), c.metric, value_text(c.value), against, value_text(c.versus_value),
             difference_text(c.difference), relative_text(c.relative), c.word + (f" ({c.note})" if c.note else "")]
    return _with_interval(cells, interval_text(c)) if sure else cells


def _ablation_cells(c, sure: bool = False) -> list[str]:
    cells = [c.metric + (f" ({c.note})" if c.note else ""), value_text(c.value), value_text(c.versus_value),
             difference_text(c.difference), relative_text(c.relative), c.word]
    return _with_interval(cells, interval_text(c)) if sure else cells


def _heads(head: tuple, comps) -> list:
    return _with_interval(head, INTERVAL_HEAD) if _sure(comps) else list(head)


def _html_rows(head, lines, numeric: set, attrs: str) -> str:
    """A small table whose last column is a direction word (better / worse / same), coloured by it."""
    th = "".join(f"<th>{E(h)}</th>" for h in head)
    trs = []
    for cells in lines:
        tds = [f'<td class="num">{E(v)}</td>' if j in numeric else f"<td>{E(v)}</td>" for j, v in enumerate(cells)]
        tds[-1] = f'<td class="{E(cells[-1].split(" ", 1)[0])}">{E(cells[-1])}</td>'
        trs.append(f"<tr>{''.join(tds)}</tr>")
    return f'<table {attrs}><thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


def _html_verdict(verdict: Verdict, history: dict) -> list[str]:
    parts = ['<h2>Verdict</h2>', f'<p class="verdict">{E(verdict.sentence)}</p>']
    if verdict.rows:
        lines = [_verdict_cells(c, history, _sure(verdict.rows)) for c in verdict.rows]
        parts.append(_html_rows(_heads(VERDICT_HEAD, verdict.rows), lines, {3, 5, 6, 7}, 'id="verdict"'))
    for with_name, without_name, comps in verdict.ablations:
        parts.append(f"<p><b>{E(ablation_sentence(with_name, without_name, comps))}</b></p>")
        if comps:
            lines = [_ablation_cells(c, _sure(comps)) for c in comps]
            parts.append(_html_rows(_heads(ABLATION_HEAD, comps), lines, {1, 2, 3, 4}, 'class="ablation"'))
    parts.append('<p class="muted small">difference = value − its reference; relative = difference / |reference|; '
                 "better or worse by the metric's direction (↓ lower is better, ↑ higher is better).</p>")
    return parts


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
    return f"{x:.3g}" if is_number(x) else str(x)


def _dist_html(rating: dict, reference) -> str:
    """The rating distribution as a small column chart (CSS only; the reference rating in red), with the
    probabilities in the tooltip, and the expected / most likely rating below."""
    scale, probs = rating.get("scale"), rating.get("probs")
    parts = []
    if isinstance(scale, list) and isinstance(probs, list) and len(scale) == len(probs) and scale:
        ref = as_number(reference)
        top = max((p for p in probs if is_number(p)), default=0) or 1
        cols = []
        for v, p in zip(scale, probs):
            p = p if is_number(p) else 0.0
            is_ref = ref is not None and as_number(v) == ref
            cols.append(f'<div class="col{" ref" if is_ref else ""}" title="{E(_num(v))}: {p:.3f}">'
                        f'<div class="track"><div class="bar" style="height:{100 * p / top:.0f}%"></div></div>'
                        f"<div>{E(_num(v))}</div></div>")
        parts.append(f'<div class="dist">{"".join(cols)}</div>')
    extra = [f"{k.replace('_', ' ')} {_num(rating.get(k))}" for k in ("expected", "most_likely") if k in rating]
    if extra:
        parts.append(f'<div class="muted small">{E(", ".join(extra))}</div>')
    return "".join(parts)


def _html_prediction(row: dict) -> str:
    preds = _prediction_texts(row)
    if len(preds) > 1:  # several samples: numbered
        return "".join(f'<div><span class="muted">{k}.</span> {E(p)}</div>' for k, p in enumerate(preds, 1))
    return "".join(f"<div>{E(p)}</div>" for p in preds) or '<span class="muted">(not generated)</span>'


def _html_sample_row(row: dict) -> str:
    extra = []
    if isinstance(row.get("rating"), dict):
        extra.append(_dist_html(row["rating"], row.get("reference")))
    pick = row.get("pick")
    if isinstance(pick, dict):
        extra.append(f'<div class="muted">picked the real one among {E(fmt(pick.get("k")))} distractors: '
                     f'{E(fmt(pick.get("correct")))}</div>')
    return (f'<tr><td class="num">{E(fmt(row.get("target_index")))}</td>'
            f'<td class="num">{E(fmt(row.get("history_len")))}</td>'
            f'<td class="text">{E(str(row.get("item") or ""))}</td>'
            f'<td class="text">{E(str(row.get("reference") or ""))}</td>'
            f'<td class="text">{_html_prediction(row)}</td><td>{"".join(extra)}</td>'
            f'<td>{E(error_text(row))}</td></tr>')


def _html_samples(run: Run, users: list) -> str:
    if not run.predictions_file:
        return '<p class="note">no predictions (run `usertwin predict`)</p>'
    if not users:
        return f'<p class="note">{"no users asked for" if run.predictions else "the predictions file has no rows"}</p>'
    out = []
    for user, rows in users:
        trs = "".join(_html_sample_row(row) for row in rows)
        n_items = rows[0].get("user_items") if rows else None
        summary = f"user {user}" + (f" ({fmt(n_items)} items in all)" if n_items is not None else "")
        out.append(f"<details><summary>{E(summary)}</summary><div class=\"scroll\"><table class=\"samples\">"
                   "<thead><tr><th>target</th><th>history</th><th>item</th><th>reference</th><th>prediction</th>"
                   f"<th>rating / pick</th><th>error (ratings) / loss (text)</th></tr></thead><tbody>{trs}</tbody></table>"
                   "</div></details>")
    return "".join(out)


def _run_notes(run: Run) -> list[str]:
    return [f"missing {name} ({run.hints[name]})" for name in run.missing] + run.problems


BUCKET_SECTIONS = (("history", "history length"), ("activity", "user activity"))


def _seen(run: Run) -> str:
    """What the run saw, in the run list: its ablation and history ("no history" when none reached it)."""
    bits = [run.config.get("ablation"), history_label(run)]
    return ", ".join(str(b) for b in bits if b)


def _html_runs(runs) -> list[str]:
    parts = ["<h2>Runs</h2><ul>"]
    for r in runs:
        notes = _run_notes(r)
        note = f' — <span class="note">{E("; ".join(notes))}</span>' if notes else ""
        seen = f" ({E(_seen(r))})" if _seen(r) else ""
        parts.append(f"<li><b>{E(r.name)}</b>{seen} <span class=\"muted\">{E(str(r.path))}</span>{note}</li>")
    return parts


def _html_bucket_sections(plots, buckets) -> list[str]:
    parts = []
    for key, what in BUCKET_SECTIONS:
        labels, stats = buckets[key]
        parts.append(f"<h2>Metrics by {what}</h2>")
        if (reason := one_bucket(stats, what)) is not None:
            parts.append(f'<p class="note">{E(reason)}</p>')
            continue
        parts.append(_img(plots.get(key), f"loss by {what}", "no run has predictions"))
        if stats:
            parts.append(_html_buckets(labels, stats, "loss", f"loss by {what}"))
            if len(bucket_panels(stats)) > 1:
                parts.append(_html_buckets(labels, stats, "rmse", f"expected-rating RMSE by {what}"))
    return parts


def render_html(runs, table, plots, buckets, samples, title, verdict: Verdict) -> str:
    n_base = sum(row["baseline"] for row in table.rows)
    counts = f"{len(runs)} run(s)" + (f", {n_base} baseline(s)" if n_base else "")
    history = {r.name: history_label(r) or "–" for r in runs}
    parts = [f"<h1>{E(title)}</h1>",
             *_html_verdict(verdict, history),
             *_html_runs(runs), "</ul>",
             f'<details class="full"><summary>All metrics ({len(table.columns)} columns)</summary>'
             f'<p class="muted">{counts}. ↓ lower is better, ↑ higher is better; the single best value of such a '
             "column in bold. Targets: the rows scored. Losses are per target token.</p>",
             _html_metrics(table), "</details>",
             "<h2>Training and validation loss</h2>",
             _img(plots.get("loss"), "training and validation loss", NO_LOGS),
             *_html_bucket_sections(plots, buckets),
             "<h2>Predictions next to the real continuation</h2>"]
    for r in runs:
        parts.append(f"<h3>{E(r.name)}</h3>")
        parts.append(_html_samples(r, samples.get(r.name, [])))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{E(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------- Markdown


# Markdown's own escapes (a backslash before the character), never HTML entities: `&` stays `&`, and `<` is
# written `\<` so that no text of a user becomes HTML where the Markdown is rendered. Backticks stay: the
# report's own sentences name commands in code spans, and a code span in a user's text is harmless.
_MD_SPECIAL = re.compile(r"([\\*\[\]<>|])")
_MD_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")  # inside a word (user_mean) it is plain


def _md(text, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    if limit and len(text) > limit:
        text = text[:limit - 1] + "…"
    return _MD_UNDERSCORE.sub(r"\_", _MD_SPECIAL.sub(r"\\\1", text))


def _md_table(header: list, lines: list) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _md_metrics(table: Table) -> str:
    best = best_values(table)
    lines = []
    for row in table.rows:
        cells = row["cells"]
        name = f"*{_md(row['name'])}* (baseline)" if row["baseline"] else _md(row["name"])
        line = [name] + [_md(fmt(cells.get(c))) for c in IDENTITY_COLUMNS[1:]]
        for c in table.columns:
            v = _md(fmt(cells.get(c)))
            line.append(f"**{v}**" if c in best and cells.get(c) == best[c] else v)
        lines.append(line)
    header = [f"{_md(c)} {arrow(table.paths[c][-1])}".rstrip() for c in table.columns]
    return _md_table(list(IDENTITY_COLUMNS) + header, lines)


def _md_verdict(verdict: Verdict, history: dict) -> list[str]:
    out = ["## Verdict", "", _md(verdict.sentence)]
    if verdict.rows:
        sure = _sure(verdict.rows)
        out += ["", _md_table(_heads(VERDICT_HEAD, verdict.rows),
                              [[_md(x) for x in _verdict_cells(c, history, sure)] for c in verdict.rows])]
    for with_name, without_name, comps in verdict.ablations:
        out += ["", f"**{_md(ablation_sentence(with_name, without_name, comps))}**"]
        if comps:
            out += ["", _md_table(_heads(ABLATION_HEAD, comps),
                                  [[_md(x) for x in _ablation_cells(c, _sure(comps))] for c in comps])]
    return out


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


def _md_bucket_sections(images, buckets) -> list[str]:
    out = []
    for kind, what in BUCKET_SECTIONS:
        labels, stats = buckets[kind]
        out += ["", f"## Metrics by {what}", ""]
        if (reason := one_bucket(stats, what)) is not None:
            out.append(_md(reason))
            continue
        if kind not in images:
            out.append("no run has predictions")
            continue
        out += [f"![loss by {what}]({images[kind]})", "", _md_buckets(labels, stats, "loss", f"loss by {what}")]
        if len(bucket_panels(stats)) > 1:
            out += ["", _md_buckets(labels, stats, "rmse", f"expected-rating RMSE by {what}")]
    return out


def _md_samples(run: Run, users: list) -> str:
    if not users:
        return ("no predictions" if not run.predictions_file else
                "the predictions file has no rows" if not run.predictions else "no users asked for")
    lines = []
    for user, rows in users:
        for row in rows:
            preds = _prediction_texts(row)
            rating = row.get("rating") if isinstance(row.get("rating"), dict) else {}
            lines.append([_md(user), _md(fmt(row.get("history_len"))), _md(row.get("item") or "", 120),
                          _md(row.get("reference") or "", 300), _md(preds[0] if preds else "–", 300),
                          _md(_num(rating.get("expected")) if rating else "–"), _md(error_text(row))])
    return _md_table(["user", "history", "item", "reference", "prediction", "expected rating",
                      "error (ratings) / loss (text)"], lines)


def render_markdown(runs, table, images, buckets, samples, title, verdict: Verdict) -> str:
    history = {r.name: history_label(r) or "–" for r in runs}
    out = [f"# {_md(title)}", "", *_md_verdict(verdict, history), "", "## Runs", ""]
    for r in runs:
        notes = _run_notes(r)
        seen = f" ({_md(_seen(r))})" if _seen(r) else ""
        out.append(f"- **{_md(r.name)}**{seen} `{r.path}`" + (f" — {_md('; '.join(notes))}" if notes else ""))
    out += ["", "## Metrics", "", "↓ lower is better, ↑ higher is better; the single best value of such a column "
            "in bold. Targets: the rows scored. Losses are per target token.", "", _md_metrics(table), "",
            "## Training and validation loss", ""]
    out.append(f"![training and validation loss]({images['loss']})" if "loss" in images else NO_LOGS)
    out += _md_bucket_sections(images, buckets)
    out += ["", "## Predictions next to the real continuation"]
    for r in runs:
        out += ["", f"### {_md(r.name)}", "", _md_samples(r, samples.get(r.name, []))]
    return "\n".join(out) + "\n"
