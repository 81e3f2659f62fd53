"""How sure a number is: 95% intervals for a predictions file's headline metrics, and for the difference between
two files on the targets both hold, by resampling users (the cluster bootstrap).

Why users and not targets: one user's targets share a history and a taste, so their errors move together; a
bootstrap that resampled targets as if independent would give intervals too narrow to trust. Each resample
draws as many users as the file has, with replacement, and recomputes the metric over all their targets;
the interval is the 2.5th to 97.5th percentile of the resampled values. The seed is fixed, so a file always
gets the same interval.

Metrics: the expected rating's RMSE and MAE (the likelihood-scored rating, `rating.expected`) and the
pick-the-real-one accuracy. A difference is "A - B" on the same targets (matched by user, split, target index
and item); its interval excluding 0 says the two differ beyond what the choice of users explains.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
SEED = 0
FEW_USERS = 20  # below this, a resample of users is a coarse picture of the population: said in the output

METRICS = ("rating_expected_rmse", "rating_expected_mae", "pick_accuracy")
LABELS = {"rating_expected_rmse": "expected-rating RMSE", "rating_expected_mae": "expected-rating MAE",
          "pick_accuracy": "pick-the-real-one accuracy"}


def target_key(row: dict) -> tuple:
    return (str(row.get("user")), row.get("split"), row.get("target_index"), row.get("item"))


def _contributions(row: dict) -> dict:
    """{metric: (value, count)} this row adds to its user's sums."""
    out = {}
    expected = (row.get("rating") or {}).get("expected")
    try:
        ref = float(row.get("reference"))
    except (TypeError, ValueError):
        ref = None
    if expected is not None and ref is not None:
        err = float(expected) - ref
        out["rating_expected_rmse"] = (err * err, 1)
        out["rating_expected_mae"] = (abs(err), 1)
    if row.get("pick"):
        out["pick_accuracy"] = (float(bool(row["pick"].get("correct"))), 1)
    return out


def _user_sums(rows, users: list) -> dict:
    """{metric: (sums per user, counts per user)} as arrays in the order of `users`."""
    where = {u: i for i, u in enumerate(users)}
    sums = {m: (np.zeros(len(users)), np.zeros(len(users))) for m in METRICS}
    for row in rows:
        i = where[str(row.get("user"))]
        for m, (v, c) in _contributions(row).items():
            sums[m][0][i] += v
            sums[m][1][i] += c
    return {m: s for m, s in sums.items() if s[1].sum() > 0}


def _finish(metric: str, total, count):
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return np.sqrt(mean) if metric.endswith("rmse") else mean


def _weights(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, users): how often each user is drawn in each resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_users, size=(resamples, n_users))
    weights = np.zeros((resamples, n_users))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    return weights


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
    """{"method", "users", "resamples", "few_users", METRIC: {"value", "ci95": [lo, hi]}} for the metrics the rows
    have; None with fewer than two users (one user resampled is always the same user)."""
    rows = list(rows)
    users = sorted({str(r.get("user")) for r in rows})
    if len(users) < 2:
        return None
    sums = _user_sums(rows, users)
    if not sums:
        return None
    w = _weights(len(users), resamples, seed)
    out = _header(len(users), resamples)
    for m, (total, count) in sums.items():
        value = float(_finish(m, total.sum(), count.sum()))
        out[m] = {"value": value, "ci95": _percentiles(_finish(m, w @ total, w @ count))}
    return out


def paired(rows_a, rows_b, resamples: int = RESAMPLES, seed: int = SEED) -> dict | None:
    """A - B on the targets both files hold: {"method", "users", "resamples", "few_users", "targets",
    "only_a", "only_b", METRIC: {"a", "b", "difference", "ci95"}}; a metric is compared on the targets where
    both rows have it. None when they share targets of fewer than two users."""
    a = {target_key(r): r for r in rows_a}
    b = {target_key(r): r for r in rows_b}
    both = [k for k in a if k in b]
    users = sorted({k[0] for k in both})
    if len(users) < 2:
        return None
    pairs = [(a[k], b[k]) for k in both]
    w = _weights(len(users), resamples, seed)
    out = dict(_header(len(users), resamples), targets=len(both), only_a=len(a) - len(both),
               only_b=len(b) - len(both))
    for m in METRICS:
        # a metric is compared only on the targets where both rows carry it
        keep = [(ra, rb) for ra, rb in pairs if m in _contributions(ra) and m in _contributions(rb)]
        if not keep:
            continue
        ta, ca = _user_sums([ra for ra, _ in keep], users)[m]
        tb, cb = _user_sums([rb for _, rb in keep], users)[m]
        va, vb = float(_finish(m, ta.sum(), ca.sum())), float(_finish(m, tb.sum(), cb.sum()))
        diffs = _finish(m, w @ ta, w @ ca) - _finish(m, w @ tb, w @ cb)
        out[m] = {"a": va, "b": vb, "difference": va - vb, "ci95": _percentiles(diffs)}
    return out


def verdict(metric: str, entry: dict) -> str:
    """'lower', 'higher', 'the same' or 'not separable from noise' for a paired difference (A - B)."""
    ci = entry.get("ci95")
    if ci == [0.0, 0.0] and entry.get("difference") == 0:
        return "the same"
    if not ci or ci[0] <= 0 <= ci[1]:
        return "not separable from noise"
    return "lower" if ci[1] < 0 else "higher"


def format_intervals(iv: dict | None) -> str:
    """The lines `usertwin evaluate` prints under its table."""
    if not iv:
        return "95% intervals: need targets of at least two users"
    lines = [f"95% intervals ({iv['resamples']:,} resamples of the {iv['users']:,} users; a user's targets move "
             f"together){' -- fewer than %d users: a coarse guide' % FEW_USERS if iv['few_users'] else ''}"]
    for m in METRICS:
        if m in iv and iv[m]["ci95"]:
            lo, hi = iv[m]["ci95"]
            lines.append(f"  {LABELS[m]}: {iv[m]['value']:.3f} [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines)


def format_paired(cmp: dict | None, name_a: str, name_b: str) -> str:
    """The lines `usertwin evaluate --against` prints: each metric's A - B with its interval and what it says."""
    if not cmp:
        return f"{name_a} vs {name_b}: they share targets of fewer than two users; nothing to compare"
    lines = [f"{name_a} minus {name_b} on the {cmp['targets']:,} targets both hold ({cmp['only_a']:,} only in the "
             f"first, {cmp['only_b']:,} only in the second; {cmp['resamples']:,} resamples of {cmp['users']:,} users"
             f"{', fewer than %d: a coarse guide' % FEW_USERS if cmp['few_users'] else ''}):"]
    for m in METRICS:
        if m in cmp and cmp[m]["ci95"]:
            e = cmp[m]
            lo, hi = e["ci95"]
            lines.append(f"  {LABELS[m]}: {e['a']:.3f} vs {e['b']:.3f}, difference {e['difference']:+.3f} "
                         f"[{lo:+.3f}, {hi:+.3f}]: {verdict(m, e)}")
    return "\n".join(lines)
