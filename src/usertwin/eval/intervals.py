"""How sure a number is: 95% intervals for a predictions file's headline metrics, and for the difference between
two files on the targets both hold, by resampling users (the cluster bootstrap).

Why users and not targets: one user's targets share a history and a taste, so their errors move together; a
bootstrap that resampled targets as if independent would give intervals too narrow to trust. Each resample
draws as many users as the file has, with replacement, and recomputes the metric over all their targets;
the interval is the 2.5th to 97.5th percentile of the resampled values. The seed is fixed, so a file always
gets the same interval.

Metrics: the expected rating's RMSE and MAE (the likelihood-scored rating, `rating.expected`), pick-the-real-one
accuracy, and for generated text corpus chrF and BLEU per language (sacrebleu's own sufficient statistics,
summed over the resampled users' targets, so each resample's score is the corpus score of that resample). A
difference is "A - B" on the same targets (matched by user, split, target index and item); its interval
excluding 0 says the two differ beyond what the choice of users explains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from usertwin.eval import metrics as M

RESAMPLES = 1000
SEED = 0
FEW_USERS = 20  # below this, a resample of users is a coarse picture of the population: said in the output

METRICS = ("rating_expected_rmse", "rating_expected_mae", "pick_accuracy")  # and text_<language>_<chrf|bleu>
LABELS = {"rating_expected_rmse": "expected-rating RMSE", "rating_expected_mae": "expected-rating MAE",
          "pick_accuracy": "pick-the-real-one accuracy"}


@dataclass
class Metric:
    """One metric as the bootstrap reads it: a row's additive statistics (None when the row has none), and the
    metric's value from statistics summed over any set of rows."""

    key: str
    label: str
    stats: Callable  # rows -> [np.ndarray | None], one per row
    finish: Callable  # summed statistics -> float


def target_key(row: dict) -> tuple:
    return (str(row.get("user")), row.get("split"), row.get("target_index"), row.get("item"))


def _reference(row: dict) -> float | None:
    return M.as_number(row.get("reference"))


def _rating_stats(kind: str):
    def stats(rows):
        out = []
        for r in rows:
            expected, ref = (r.get("rating") or {}).get("expected"), _reference(r)
            err = None if expected is None or ref is None else float(expected) - ref
            out.append(None if err is None else np.array([err * err if kind == "rmse" else abs(err), 1.0]))
        return out
    return stats


def _pick_stats(rows):
    return [np.array([float(bool(r["pick"].get("correct"))), 1.0]) if r.get("pick") else None for r in rows]


def _mean(total) -> float:
    return float(total[0] / total[1]) if total[1] else float("nan")


def _text_rows(rows, language: str) -> list[bool]:
    """The rows evaluate scores as `language` text: not rating or choice rows, with a generated prediction."""
    return [not M.is_rating_row(r) and not M.is_choice_row(r) and bool(r.get("predictions"))
            and (r.get("language") or "en") == language for r in rows]


def _text_metric(language: str, name: str) -> Metric:
    from sacrebleu.metrics import BLEU, CHRF

    scorer = CHRF() if name == "chrf" else BLEU(tokenize=M.BLEU_TOKENIZE.get(language, "13a"))

    def stats(rows):
        keep = _text_rows(rows, language)
        chosen = [r for r, k in zip(rows, keep) if k]
        per_row = iter(scorer._extract_corpus_statistics([str(r["predictions"][0]) for r in chosen],
                                                         [[str(r.get("reference", "")) for r in chosen]])
                       if chosen else [])
        return [np.array(next(per_row), dtype=float) if k else None for k in keep]

    label = f"{'chrF' if name == 'chrf' else 'BLEU'} [{language}]"
    return Metric(f"text_{language}_{name}", label, stats,
                  lambda total: float(scorer._compute_score_from_stats(list(total)).score))


def metrics_for(rows) -> list[Metric]:
    """The metrics the rows can have: the rating and pick ones, and chrF/BLEU for each language of text rows."""
    out = [Metric("rating_expected_rmse", LABELS["rating_expected_rmse"], _rating_stats("rmse"),
                  lambda t: float(np.sqrt(_mean(t)))),
           Metric("rating_expected_mae", LABELS["rating_expected_mae"], _rating_stats("mae"), _mean),
           Metric("pick_accuracy", LABELS["pick_accuracy"], _pick_stats, _mean)]
    languages = sorted({r.get("language") or "en" for r in rows
                        if not M.is_rating_row(r) and not M.is_choice_row(r) and r.get("predictions")})
    return out + [_text_metric(lang, name) for lang in languages for name in ("chrf", "bleu")]


def _user_sums(stats: list, users_of_rows: list, users: list) -> np.ndarray | None:
    """(users, statistics) sums of the rows that have the metric; None when none has it."""
    where = {u: i for i, u in enumerate(users)}
    present = [(where[u], s) for u, s in zip(users_of_rows, stats) if s is not None]
    if not present:
        return None
    sums = np.zeros((len(users), len(present[0][1])))
    for i, s in present:
        sums[i] += s
    return sums


def _weights(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, users): how often each user is drawn in each resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_users, size=(resamples, n_users))
    weights = np.zeros((resamples, n_users))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    return weights


def _resampled(metric: Metric, sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.array([metric.finish(total) for total in weights @ sums])


def _percentiles(values: np.ndarray) -> list | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _header(users: int, resamples: int) -> dict:
    return {"method": "cluster bootstrap over users, percentile 95%", "users": users, "resamples": resamples,
            "few_users": users < FEW_USERS}


def intervals(rows, resamples: int = RESAMPLES, seed: int = SEED) -> dict | None:
    """{"method", "users", "resamples", "few_users", "labels": {metric: label}, METRIC: {"value", "ci95": [lo, hi]}}
    for the metrics the rows have; None with fewer than two users (one user resampled is always that user)."""
    rows = list(rows)
    row_users = [str(r.get("user")) for r in rows]
    users = sorted(set(row_users))
    if len(users) < 2:
        return None
    w = _weights(len(users), resamples, seed)
    out = dict(_header(len(users), resamples), labels={})
    for metric in metrics_for(rows):
        sums = _user_sums(metric.stats(rows), row_users, users)
        if sums is None:
            continue
        out[metric.key] = {"value": metric.finish(sums.sum(0)), "ci95": _percentiles(_resampled(metric, sums, w))}
        out["labels"][metric.key] = metric.label
    return out if out["labels"] else None


def paired(rows_a, rows_b, resamples: int = RESAMPLES, seed: int = SEED) -> dict | None:
    """A - B on the targets both files hold: {"method", "users", "resamples", "few_users", "targets", "only_a",
    "only_b", "labels", METRIC: {"a", "b", "difference", "ci95"}}; a metric is compared on the targets where both
    rows have it. None when they share targets of fewer than two users."""
    a = {target_key(r): r for r in rows_a}
    b = {target_key(r): r for r in rows_b}
    both = [k for k in a if k in b]
    users = sorted({k[0] for k in both})
    if len(users) < 2:
        return None
    ra, rb, row_users = [a[k] for k in both], [b[k] for k in both], [k[0] for k in both]
    w = _weights(len(users), resamples, seed)
    out = dict(_header(len(users), resamples), targets=len(both), only_a=len(a) - len(both),
               only_b=len(b) - len(both), labels={})
    for metric in metrics_for(ra):
        sa, sb = metric.stats(ra), metric.stats(rb)
        keep = [x is not None and y is not None for x, y in zip(sa, sb)]
        if not any(keep):
            continue
        sums_a = _user_sums([x if k else None for x, k in zip(sa, keep)], row_users, users)
        sums_b = _user_sums([y if k else None for y, k in zip(sb, keep)], row_users, users)
        va, vb = metric.finish(sums_a.sum(0)), metric.finish(sums_b.sum(0))
        diffs = _resampled(metric, sums_a, w) - _resampled(metric, sums_b, w)
        out[metric.key] = {"a": va, "b": vb, "difference": va - vb, "ci95": _percentiles(diffs)}
        out["labels"][metric.key] = metric.label
    return out


def verdict(metric: str, entry: dict) -> str:
    """'lower', 'higher', 'the same' or 'not separable from noise' for a paired difference (A - B)."""
    ci = entry.get("ci95")
    if ci == [0.0, 0.0] and entry.get("difference") == 0:
        return "the same"
    if not ci or ci[0] <= 0 <= ci[1]:
        return "not separable from noise"
    return "lower" if ci[1] < 0 else "higher"


def _metric_keys(result: dict) -> list:
    return [k for k in (result.get("labels") or {}) if (result.get(k) or {}).get("ci95")]


def format_intervals(iv: dict | None) -> str:
    """The lines `usertwin evaluate` prints under its table."""
    if not iv:
        return "95% intervals: need targets of at least two users"
    lines = [f"95% intervals ({iv['resamples']:,} resamples of the {iv['users']:,} users; a user's targets move "
             f"together){' -- fewer than %d users: a coarse guide' % FEW_USERS if iv['few_users'] else ''}"]
    for m in _metric_keys(iv):
        lo, hi = iv[m]["ci95"]
        lines.append(f"  {iv['labels'][m]}: {iv[m]['value']:.3f} [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines)


def format_paired(cmp: dict | None, name_a: str, name_b: str) -> str:
    """The lines `usertwin evaluate --against` prints: each metric's A - B with its interval and what it says."""
    if not cmp:
        return f"{name_a} vs {name_b}: they share targets of fewer than two users; nothing to compare"
    lines = [f"{name_a} minus {name_b} on the {cmp['targets']:,} targets both hold ({cmp['only_a']:,} only in the "
             f"first, {cmp['only_b']:,} only in the second; {cmp['resamples']:,} resamples of {cmp['users']:,} users"
             f"{', fewer than %d: a coarse guide' % FEW_USERS if cmp['few_users'] else ''}):"]
    for m in _metric_keys(cmp):
        e = cmp[m]
        lo, hi = e["ci95"]
        lines.append(f"  {cmp['labels'][m]}: {e['a']:.3f} vs {e['b']:.3f}, difference {e['difference']:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}]: {verdict(m, e)}")
    return "\n".join(lines)


def pair_line(key: str, cmp: dict | None, metrics, digits: int, name=None) -> str | None:
    """One line of a benchmark's paired differences, "A - B (N targets, U users): LABEL +d [lo, hi] verdict; ...",
    for `metrics` (keys) that have an interval; `name(key)` shortens a label. None when none has one."""
    if not cmp:
        return None
    name = name or cmp["labels"].get
    parts = [f"{name(m)} {cmp[m]['difference']:+.{digits}f} [{cmp[m]['ci95'][0]:+.{digits}f}, "
             f"{cmp[m]['ci95'][1]:+.{digits}f}] {verdict(m, cmp[m])}" for m in metrics if (cmp.get(m) or {}).get("ci95")]
    if not parts:
        return None
    few = ", too few for more than a coarse guide" if cmp["few_users"] else ""
    return f"{key} ({cmp['targets']:,} targets, {cmp['users']} users{few}): " + "; ".join(parts)
