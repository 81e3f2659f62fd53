"""Rating and text metrics of predictions: pure functions of the rows of a predictions file, no model.

* Ratings: the generated rating is the first number in the generated text, snapped to the rating scale
  (`parse_rating`); RMSE, MAE, exact and within-0.5 accuracy over the parseable ones, and the share of
  unparseable outputs. The likelihood-scored ratings (`rating.most_likely`, `rating.expected`) are scored the
  same way.
* Text: corpus BLEU and chrF (sacrebleu), ROUGE-L F1, length ratio and distinct-1/2, with units that work for
  Chinese and Japanese as well as English: characters for zh/ja, lowercased whitespace words for en.
  BLEU, chrF and ROUGE-L are reported on a 0-100 scale.
* Target perplexity: exp of the per-token loss averaged over all target tokens (rows weighted by n_tokens).
* Choice items (questionnaire answers: a Likert level or one of listed options, `usertwin.data.choices`;
  rows with a `choice` entry): accuracy of the most likely option, which is pick-the-real-one among the item's
  own options (against chance, the mean 1/K), and for Likert items the MAE in levels (1..K) of the most likely
  and of the expected level. They are not text rows.
* Everything again per user-activity bucket (the user's total number of items, `ACTIVITY_EDGES`).

How the metrics are shown is declared once, in `METRICS` (one `MetricSpec` each): the `usertwin evaluate` table
here and the report's metrics table both read it, so a new metric is its computing code plus one entry there.
The specs also say which metrics the report's verdict leads with (`headline`) and which way is better.

The expected rating has no exact accuracy: it is a mean over the scale, almost never a scale value, so its
"accuracy" was ~0 for any model (see `rating_metrics(on_scale=False)`).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass

from usertwin.data.records import is_rating
from usertwin.errors import UsertwinError

DEFAULT_SCALE = tuple(x / 2 for x in range(1, 11))  # MovieLens: 0.5, 1.0, ..., 5.0
# user-activity buckets by the user's total number of items: 1-20, 21-50, 51-200, 201+
ACTIVITY_EDGES = (20, 50, 200)
CJK_LANGUAGES = ("zh", "ja")
# sacrebleu tokenizers by language; "ja-mecab" needs MeCab, so Japanese is scored on characters
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "en": "13a"}

_NUMBER = re.compile(r"(?<![\d.])-?(?:\d+(?:\.\d+)?|\.\d+)")


# ---------------------------------------------------------------- ratings


def _normalise(text: str) -> str:
    """NFKC turns full-width digits and punctuation ("４．５") into ASCII ("4.5")."""
    return unicodedata.normalize("NFKC", str(text))


def as_number(text) -> float | None:
    """A reference rating as a float ("4.0", " ４ "); None when the whole text is not one finite number."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) if math.isfinite(text) else None
    try:
        x = float(_normalise(text).strip())
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def parse_rating(text, scale=DEFAULT_SCALE) -> float | None:
    """The rating in a generated text, or None when it has none (unparseable).

    Rule: take the first number written with digits (full-width digits count: "４．５" is 4.5; a leading
    minus sign counts; words such as "four" do not), then snap it to the nearest value of `scale` if it
    lies within half a scale step of it (the step is the smallest gap between scale values; ties go to the
    lower value). A number further from every scale value ("8/10" on a 0.5-5 scale) is unparseable.
    Examples on the MovieLens scale: "I'd say 4.5 stars" -> 4.5, "4" -> 4.0, "4.3" -> 4.5, "5.2" -> 5.0,
    "5.3" -> None, "four" -> None.
    """
    if text is None:
        return None
    match = _NUMBER.search(_normalise(text))
    if match is None:
        return None
    return snap(float(match.group()), scale)


def snap(x: float, scale=DEFAULT_SCALE) -> float | None:
    """x snapped to the nearest value of `scale` when within half a step of it, else None."""
    values = sorted(float(v) for v in scale)
    if not values:
        return None
    gaps = [b - a for a, b in zip(values, values[1:]) if b > a]
    half = min(gaps) / 2 if gaps else 0.5
    best = min(values, key=lambda v: (abs(v - x), v))
    return best if abs(best - x) <= half + 1e-9 else None


def rating_metrics(refs, preds, on_scale: bool = True) -> dict:
    """RMSE, MAE, exact accuracy and within-0.5 accuracy of predicted against reference ratings.

    `preds[i]` is None when the prediction was unparseable: such rows count in `n` and in
    `unparseable` / `unparseable_share`, and are left out of every other metric (computed over `n_scored`).
    Metrics without any scored row are None. Accuracy is |pred - ref| < 1e-9; within-0.5 is <= 0.5.
    `on_scale=False` says the predictions are means, not scale values (the expected rating): the metrics whose
    spec is `on_scale` (exact accuracy) are left out, since a mean almost never equals a scale value and
    would score ~0 whatever the model.
    """
    refs, preds = list(refs), list(preds)
    if len(refs) != len(preds):
        raise ValueError(f"rating_metrics: {len(refs)} references but {len(preds)} predictions")
    pairs = [(float(r), float(p)) for r, p in zip(refs, preds) if p is not None]
    n, n_scored = len(refs), len(pairs)
    out = {"n": n, "n_scored": n_scored, "unparseable": n - n_scored,
           "unparseable_share": (n - n_scored) / n if n else None,
           "rmse": None, "mae": None, "accuracy": None, "within_0.5": None}
    if pairs:
        errs = [abs(p - r) for r, p in pairs]
        out["rmse"] = math.sqrt(sum(e * e for e in errs) / n_scored)
        out["mae"] = sum(errs) / n_scored
        out["accuracy"] = sum(e < 1e-9 for e in errs) / n_scored
        out["within_0.5"] = sum(e <= 0.5 + 1e-9 for e in errs) / n_scored
    if not on_scale:
        for spec in specs("rating"):
            if spec.on_scale:
                out.pop(spec.key, None)
    return out


# ---------------------------------------------------------------- text


def units(text: str, language: str) -> list[str]:
    """Scoring units: characters (whitespace dropped) for zh/ja; lowercased whitespace words otherwise."""
    if language in CJK_LANGUAGES:
        return [c for c in str(text) if not c.isspace()]
    return str(text).lower().split()


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two sequences.

    Bit-parallel dynamic programming (Allison & Dix 1986, Hyyrö 2004): bit i of `v` is 1 while row i of the
    classic LCS table has not yet gained a match; each element of `b` updates all rows at once with big-int
    arithmetic. Same result as the textbook O(len(a) * len(b)) table, much faster in Python.
    """
    masks: dict = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(ref: str, hyp: str, language: str) -> float:
    """ROUGE-L F1 (beta = 1) of one pair, 0-1: LCS over units / hypothesis and reference lengths.
    Both empty -> 1; one empty -> 0."""
    r, h = units(ref, language), units(hyp, language)
    if not r or not h:
        return float(not r and not h)
    lcs = lcs_length(r, h)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def distinct_n(hyps, language: str, n: int) -> float | None:
    """Unique n-grams / all n-grams over all hypotheses (n-grams never cross hypotheses); None if none."""
    grams = []
    for h in hyps:
        u = units(h, language)
        grams.extend(tuple(u[i:i + n]) for i in range(len(u) - n + 1))
    return len(set(grams)) / len(grams) if grams else None


def perplexity(losses, n_tokens=None) -> float | None:
    """exp(mean loss per target token): each row's mean loss weighted by its n_tokens (1 each when not
    given); rows with a missing loss are left out. None when no row has a loss."""
    n_tokens = [1] * len(losses) if n_tokens is None else n_tokens
    pairs = [(float(loss), float(w)) for loss, w in zip(losses, n_tokens) if loss is not None and w]
    total = sum(w for _, w in pairs)
    if not total:
        return None
    return math.exp(sum(loss * w for loss, w in pairs) / total)


def text_metrics(refs, hyps, language: str = "en", losses=None, n_tokens=None) -> dict:
    """Corpus BLEU and chrF (sacrebleu; tokenizer by language, BLEU_TOKENIZE), mean ROUGE-L F1 (0-100),
    length ratio (mean hypothesis length / mean reference length in units), distinct-1/2 over all
    hypotheses, and target perplexity when `losses` are given (weighted by `n_tokens`)."""
    import sacrebleu

    refs, hyps = [str(r) for r in refs], [str(h) for h in hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"text_metrics: {len(refs)} references but {len(hyps)} hypotheses")
    out = {"n": len(refs), "language": language, "bleu": None, "chrf": None, "rouge_l": None,
           "length_ratio": None, "hyp_len": None, "ref_len": None, "distinct_1": None, "distinct_2": None}
    if losses is not None:
        out["perplexity"] = perplexity(losses, n_tokens)
    if not refs:
        return out
    tokenize = BLEU_TOKENIZE.get(language, "13a")
    out["bleu"] = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score
    out["chrf"] = sacrebleu.corpus_chrf(hyps, [refs]).score
    out["rouge_l"] = 100 * sum(rouge_l(r, h, language) for r, h in zip(refs, hyps)) / len(refs)
    hyp_len = sum(len(units(h, language)) for h in hyps) / len(hyps)
    ref_len = sum(len(units(r, language)) for r in refs) / len(refs)
    out.update(hyp_len=hyp_len, ref_len=ref_len, length_ratio=hyp_len / ref_len if ref_len else None,
               distinct_1=distinct_n(hyps, language, 1), distinct_2=distinct_n(hyps, language, 2))
    return out


# ---------------------------------------------------------------- rows of a predictions file


def activity_labels(edges=ACTIVITY_EDGES) -> list[str]:
    """Bucket names for `edges`: (20, 50, 200) -> 1-20, 21-50, 51-200, 201+."""
    lows = [1] + [e + 1 for e in edges]
    return [f"{lo}-{hi}" for lo, hi in zip(lows, edges)] + [f"{lows[-1]}+"]


def bucket_of(value, edges, labels) -> str:
    """The label of the first bucket whose upper edge (inclusive) holds `value`; the last one above all
    edges; 'unknown' when there is no value."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "unknown"
    for edge, label in zip(edges, labels):
        if value <= edge:
            return label
    return labels[-1]


def activity_bucket(user_items, edges=ACTIVITY_EDGES) -> str:
    """The activity bucket of a user with `user_items` items in all (upper edges inclusive)."""
    return bucket_of(user_items, edges, activity_labels(edges))


def is_rating_row(row: dict) -> bool:
    """A rating row has a numeric reference and either a `rating` entry (the likelihood-scored scale) or a
    rating collection (`records.is_rating`); everything else is scored as text."""
    kind = "rating" in row or is_rating(row.get("collection"))
    return kind and as_number(row.get("reference")) is not None


def _rating_group(rows, scale) -> dict:
    refs = [as_number(r["reference"]) for r in rows]
    out = {"n": len(rows), "perplexity": _row_perplexity(rows)}
    gen = [(ref, r) for ref, r in zip(refs, rows) if r.get("predictions")]
    if gen:
        out["generated"] = rating_metrics(
            [ref for ref, _ in gen],
            [parse_rating(r["predictions"][0], (r.get("rating") or {}).get("scale") or scale) for _, r in gen])
    for key in ("most_likely", "expected"):
        scored = [(ref, r["rating"][key]) for ref, r in zip(refs, rows) if (r.get("rating") or {}).get(key) is not None]
        if scored:
            out[key] = rating_metrics([ref for ref, _ in scored], [float(p) for _, p in scored],
                                      on_scale=key != "expected")
    return out


def _text_group(rows, language: str) -> dict:
    gen = [r for r in rows if r.get("predictions")]
    out = text_metrics([r.get("reference", "") for r in gen], [r["predictions"][0] for r in gen], language)
    out.update(n=len(rows), n_generated=len(gen), perplexity=_row_perplexity(rows))
    if any(len(r["predictions"]) > 1 for r in gen):
        out.update(samples_metrics([r.get("reference", "") for r in gen], [r["predictions"] for r in gen], language))
    return out


SAMPLED = ("bleu", "chrf", "rouge_l")  # the text metrics scored on every sample of a target


def sentence_scores(ref: str, hyp: str, language: str) -> dict:
    """Sentence-level BLEU, chrF and ROUGE-L F1 (0-100) of one hypothesis: sacrebleu's sentence scores, with
    the tokenizer corpus BLEU uses for the language."""
    import sacrebleu

    ref, hyp = str(ref), str(hyp)
    return {"bleu": sacrebleu.sentence_bleu(hyp, [ref], tokenize=BLEU_TOKENIZE.get(language, "13a")).score,
            "chrf": sacrebleu.sentence_chrf(hyp, [ref]).score, "rouge_l": 100 * rouge_l(ref, hyp, language)}


def samples_metrics(refs, samples, language: str = "en") -> dict:
    """Every sample of every target scored (predict --num_samples N): for BLEU, chrF and ROUGE-L, KEY_mean is the
    mean over targets of the mean sentence score of a target's samples, KEY_best that of its best sample (the
    best-of-N oracle); `samples` is the mean number of samples per target. Sentence-level, so they differ from
    the corpus BLEU and chrF of the first samples."""
    if len(refs) != len(samples):
        raise ValueError(f"samples_metrics: {len(refs)} references but {len(samples)} lists of samples")
    out = {"samples": sum(map(len, samples)) / len(samples) if samples else None}
    per_target = [[sentence_scores(ref, h, language) for h in hyps] for ref, hyps in zip(refs, samples) if hyps]
    for key in SAMPLED:
        rows = [[s[key] for s in scored] for scored in per_target]
        out[f"{key}_mean"] = sum(sum(r) / len(r) for r in rows) / len(rows) if rows else None
        out[f"{key}_best"] = sum(max(r) for r in rows) / len(rows) if rows else None
    return out


def _row_perplexity(rows) -> float | None:
    return perplexity([r.get("loss") for r in rows], [r.get("n_tokens", 1) for r in rows])


def pick_metrics(rows) -> dict | None:
    """Pick-the-real-one: accuracy of choosing the real continuation among the reference and `k`
    distractors, and the chance level: mean of 1/(k+1) (1/len(scores) when the scores are given, which is
    the number of candidates). None when no row has a `pick`."""
    picks = [r["pick"] for r in rows if r.get("pick")]
    if not picks:
        return None
    chance = [1 / len(p["scores"]) if p.get("scores") else 1 / (int(p["k"]) + 1) for p in picks]
    return {"n": len(picks), "accuracy": sum(bool(p.get("correct")) for p in picks) / len(picks),
            "chance": sum(chance) / len(chance)}


def is_choice_row(row: dict) -> bool:
    """A row of a choice item whose answer is one of its options (predict's `choice` entry)."""
    choice = row.get("choice")
    return isinstance(choice, dict) and choice.get("answer") is not None


def choice_metrics(rows) -> dict | None:
    """Choice items: `accuracy` of the most likely option (`choice.chosen == choice.answer`), `chance` (mean of
    1/K), and over the Likert rows (`choice.likert`) the mean absolute error in levels of the most likely
    level (`likert_mae`) and of the expected level (`likert_mae_expected`, when rows carry `expected_level`).
    None when no row is a choice row."""
    picks = [r["choice"] for r in rows if is_choice_row(r)]
    if not picks:
        return None
    likert = [c for c in picks if c.get("likert")]
    out = {"n": len(picks), "accuracy": sum(c["chosen"] == c["answer"] for c in picks) / len(picks),
           "chance": sum(1 / len(c["options"]) for c in picks) / len(picks),
           "likert_n": len(likert), "likert_mae": None, "likert_mae_expected": None}
    if likert:
        out["likert_mae"] = sum(abs(c["chosen"] - c["answer"]) for c in likert) / len(likert)
        expected = [c for c in likert if c.get("expected_level") is not None]
        if expected:
            out["likert_mae_expected"] = sum(abs(float(c["expected_level"]) - (c["answer"] + 1))
                                             for c in expected) / len(expected)
    return out


def _section(rows, scale) -> dict:
    """Metrics of one slice of rows: all rows together, rating rows, text rows per language."""
    out = {"all": {"n": len(rows), "perplexity": _row_perplexity(rows)}}
    if (pick := pick_metrics(rows)) is not None:
        out["all"]["pick"] = pick
    ratings = [r for r in rows if is_rating_row(r)]
    if ratings:
        out["rating"] = _rating_group(ratings, scale)
    if (choice := choice_metrics(rows)) is not None:
        out["choice"] = choice
    by_lang = defaultdict(list)
    for r in rows:
        if not is_rating_row(r) and not is_choice_row(r):
            by_lang[r.get("language") or "en"].append(r)
    if by_lang:
        out["text"] = {lang: _text_group(group, lang) for lang, group in sorted(by_lang.items())}
    return out


def evaluate_rows(rows, scale=DEFAULT_SCALE, edges=ACTIVITY_EDGES) -> dict:
    """Metrics of the rows of a predictions file, JSON-serialisable:

        {"n_rows": N, "activity_edges": [20, 50, 200],
         "overall": SECTION, "by_activity": {"1-20": SECTION, ..., "201+": SECTION}}
        SECTION = {"all": {"n", "perplexity", "pick"?},
                   "rating"?: {"n", "perplexity", "generated"?, "most_likely"?, "expected"?},   # rating_metrics
                   "choice"?: choice_metrics (rows with a `choice` entry; they are not text rows),
                   "text"?: {language: text_metrics + n_generated + perplexity
                                       + samples_metrics when a target has several predictions}}

    Generated ratings are parsed from predictions[0] with the row's `rating.scale`, else `scale`. Rows
    without predictions (--no-generate) count for perplexity and likelihood ratings only. Only buckets that
    hold rows appear in `by_activity`.
    """
    rows = list(rows)
    buckets = defaultdict(list)
    for r in rows:
        buckets[activity_bucket(r.get("user_items"), edges)].append(r)
    order = activity_labels(edges) + ["unknown"]
    return {"n_rows": len(rows), "activity_edges": list(edges), "overall": _section(rows, scale),
            "by_activity": {b: _section(buckets[b], scale) for b in order if buckets.get(b)}}


def json_lines(path, errors: str = "strict"):
    """(line number, value, None) for each non-blank line of a JSON Lines file, (line number, None, the
    JSONDecodeError) for a line that is not JSON: each caller decides what a bad line means. `errors` is how
    undecodable UTF-8 is handled (`open`'s argument); a file that cannot be read raises OSError."""
    with open(path, encoding="utf-8", errors=errors) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield lineno, None, e


def read_rows(path) -> list[dict]:
    """The rows of a predictions file; a bad line stops with its file and line number."""
    rows = []
    try:
        for lineno, row, error in json_lines(path):
            if error is not None:
                raise UsertwinError(f"{path}:{lineno}: not a JSON line ({error.msg})")
            rows.append(row)
    except OSError as e:
        raise UsertwinError(f"{path}: cannot read predictions ({e.strerror})") from None
    return rows


# ---------------------------------------------------------------- metric specs


@dataclass(frozen=True)
class MetricSpec:
    """How both tables show one metric: the `usertwin evaluate` table (`format_table`) and the report's.

    `key`: the metric's leaf name in the output of its `group`'s function (rating_metrics, text_metrics,
    pick_metrics), so in the metrics file. `label`: its column header (default: the key). `better`: "lower",
    "higher", or "" for counts and ratios without a better side; the report marks the best value of a column.
    `digits`: decimals in the evaluate table. `count` marks sizes (n, n_scored): the report puts them after the
    metrics of their group. `teacher_forced` marks a metric of the loss, which needs no generation.
    `headline`: the report's verdict leads with it (against the best baseline on the same targets).
    `versus`: the key of the same group the verdict compares it with when no baseline has it (pick accuracy
    against chance). `on_scale`: defined only for predictions on the rating scale (see `rating_metrics`).
    `generated_only`: says something only of generated text; a likelihood-scored rating or a baseline's is 0 by
    construction, so the report leaves it out there.
    """

    group: str
    key: str
    label: str = ""
    better: str = ""
    digits: int = 3
    count: bool = False
    teacher_forced: bool = False
    headline: bool = False
    versus: str = ""
    on_scale: bool = False
    generated_only: bool = False

    @property
    def header(self) -> str:
        return self.label or self.key

    @property
    def direction(self) -> int:
        return {"lower": -1, "higher": 1, "": 0}[self.better]

    @property
    def arrow(self) -> str:
        """The header's mark of the better side: ↓ lower is better, ↑ higher is better."""
        return {"lower": "↓", "higher": "↑", "": ""}[self.better]


GROUPS = ("rating", "text", "pick", "choice")

# Both tables take their column order from here. The evaluate table shows a group's counts first, then its
# teacher-forced metric (it exists without generation), then the rest in this order. The report leads each group
# of columns with the metric keys (not counts) in the order of their first appearance here, counts last.
METRICS = [
    MetricSpec("rating", "n", count=True),
    MetricSpec("rating", "n_scored", count=True),
    MetricSpec("rating", "rmse", label="RMSE", better="lower", headline=True),
    MetricSpec("rating", "mae", label="MAE", better="lower", headline=True),
    MetricSpec("rating", "accuracy", better="higher", on_scale=True),
    MetricSpec("rating", "within_0.5", better="higher"),
    MetricSpec("rating", "unparseable_share", better="lower", generated_only=True),
    MetricSpec("text", "n", count=True),
    MetricSpec("text", "bleu", label="BLEU", better="higher", digits=2, headline=True),
    MetricSpec("text", "chrf", label="chrF", better="higher", digits=2, headline=True),
    MetricSpec("text", "rouge_l", label="ROUGE-L", better="higher", digits=2),
    MetricSpec("text", "perplexity", better="lower", teacher_forced=True, headline=True),
    MetricSpec("text", "length_ratio"),
    MetricSpec("text", "distinct_1", better="higher"),
    MetricSpec("text", "distinct_2", better="higher"),
    MetricSpec("text", "samples", count=True),
    MetricSpec("text", "bleu_mean", label="BLEU mean", better="higher", digits=2),
    MetricSpec("text", "bleu_best", label="BLEU best", better="higher", digits=2),
    MetricSpec("text", "chrf_mean", label="chrF mean", better="higher", digits=2),
    MetricSpec("text", "chrf_best", label="chrF best", better="higher", digits=2),
    MetricSpec("text", "rouge_l_mean", label="ROUGE-L mean", better="higher", digits=2),
    MetricSpec("text", "rouge_l_best", label="ROUGE-L best", better="higher", digits=2),
    MetricSpec("pick", "n", count=True),
    MetricSpec("pick", "accuracy", better="higher", headline=True, versus="chance"),
    MetricSpec("pick", "chance"),
    MetricSpec("choice", "n", count=True),
    MetricSpec("choice", "accuracy", better="higher", headline=True, versus="chance"),
    MetricSpec("choice", "chance"),
    MetricSpec("choice", "likert_n", count=True),
    MetricSpec("choice", "likert_mae", label="Likert MAE", better="lower", headline=True),
    MetricSpec("choice", "likert_mae_expected", label="Likert MAE (expected)", better="lower"),
]


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a metric to both tables (its values must come from its group's function). A key already used
    elsewhere must keep that key's direction: the report decides best values by key alone."""
    if spec.group not in GROUPS:
        raise ValueError(f"metric group {spec.group!r}: choose one of {', '.join(GROUPS)}")
    if any((s.group, s.key) == (spec.group, spec.key) for s in METRICS):
        raise ValueError(f"metric {spec.group}.{spec.key} is already registered")
    if (other := spec_of(spec.key)) is not None and other.better != spec.better:
        raise ValueError(f"metric {spec.key!r} is {other.better or 'neither'}-is-better in {other.group}")
    if spec.better not in ("lower", "higher", ""):
        raise ValueError(f"metric {spec.key!r}: better must be 'lower', 'higher' or ''")
    METRICS.append(spec)
    return spec


def specs(group: str) -> list[MetricSpec]:
    return [s for s in METRICS if s.group == group]


def spec_of(key: str) -> MetricSpec | None:
    """The first registered spec of a metric key, whatever its group."""
    return next((s for s in METRICS if s.key == key), None)


def ordered_keys() -> list[str]:
    """Metric keys (no counts) in the order the report leads each group of columns with."""
    return list(dict.fromkeys(s.key for s in METRICS if not s.count))


# The rating the verdict leads with: the expected rating uses the whole scored distribution and never fails to
# parse, so it is the twin's best rating guess (the generated and most likely ones are in the full table).
HEADLINE_RATING = "expected"


def headline_spec(path: tuple) -> MetricSpec | None:
    """The spec of a metrics-file leaf (its path without `overall`/`all` levels, e.g. ("rating", "expected",
    "rmse"), ("text", "zh", "chrf"), ("pick", "accuracy")) when the verdict leads with it, else None."""
    if len(path) < 2:
        return None
    group, key = path[0], path[-1]
    if group == "rating" and (len(path) != 3 or path[1] != HEADLINE_RATING):
        return None
    if group != "text" and len(path) != (3 if group == "rating" else 2):
        return None
    spec = next((s for s in specs(group) if s.key == key), None)
    return spec if spec is not None and spec.headline else None


# ---------------------------------------------------------------- the evaluate table


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _grid(header, lines) -> str:
    """Aligned columns; a column with no value in any line is left out."""
    keep = [j for j in range(len(header)) if j == 0 or any(line[j] != "-" for line in lines)]
    header, lines = [header[j] for j in keep], [[line[j] for j in keep] for line in lines]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines])


def _columns(group: str) -> list[MetricSpec]:
    """The evaluate table's columns of a group: counts, then teacher-forced metrics, then the others."""
    return sorted(specs(group), key=lambda s: (not s.count, not s.teacher_forced))


def _section_perplexity() -> MetricSpec:
    """The rating block ends with the rating section's perplexity: one value for its generated, most likely
    and expected lines alike, so it is not a column of rating_metrics."""
    return next(s for s in _columns("text") if s.teacher_forced)


def _line(label, m: dict, columns) -> list[str]:
    return [label] + [_fmt(m.get(s.key), s.digits) for s in columns]


def _rating_line(label, m, ppl=None):
    ppl_spec = _section_perplexity()
    return _line(label, {**m, ppl_spec.key: ppl}, [*_columns("rating"), ppl_spec])


def _text_line(label, m):
    return _line(label, m, _columns("text"))


def _section_lines(name, sec, rating_lines, text_lines, pick_lines):
    rating = sec.get("rating")
    for key in ("generated", "most_likely", "expected") if rating else ():
        if key in rating:
            rating_lines.append(_rating_line(f"{name} {key}", rating[key], rating.get("perplexity")))
    for lang, m in (sec.get("text") or {}).items():
        text_lines.append(_text_line(f"{name} [{lang}]", m))
    if sec.get("all", {}).get("pick"):
        pick_lines.append(_line(name, sec["all"]["pick"], _columns("pick")))


def _named_lines(metrics: dict, rating_lines, text_lines) -> None:
    """Lines of `{name: rating_metrics or text_metrics}`: a rating entry is told by its RMSE."""
    for name, m in metrics.items():
        if "rmse" in m:
            rating_lines.append(_rating_line(name, m, m.get("perplexity")))
        else:
            text_lines.append(_text_line(f"{name} [{m.get('language', '?')}]", m))


def _choice_lines(metrics: dict) -> list:
    """Lines of the choice block: each section's `choice` entry, or each named choice_metrics (baselines)."""
    if "overall" in metrics:
        sections = [("all", metrics["overall"])] + list((metrics.get("by_activity") or {}).items())
        return [_line(name, sec["choice"], _columns("choice")) for name, sec in sections if sec.get("choice")]
    return [_line(name, m, _columns("choice")) for name, m in metrics.items() if "likert_mae" in m]


def format_table(metrics: dict) -> str:
    """A plain-text table of `evaluate_rows` output, or of `{name: rating_metrics or text_metrics}` (what
    `baselines.run_baselines` returns): one block for ratings, one for text, one for pick-the-real-one."""
    rating_lines, text_lines, pick_lines = [], [], []
    choice_lines = _choice_lines(metrics)
    if "overall" in metrics:
        sections = [("all", metrics["overall"])] + list((metrics.get("by_activity") or {}).items())
        for name, sec in sections:
            _section_lines(name, sec, rating_lines, text_lines, pick_lines)
    else:
        _named_lines({k: m for k, m in metrics.items() if "likert_mae" not in m}, rating_lines, text_lines)
    blocks = []
    headers = lambda columns: ["", *(s.header for s in columns)]  # noqa: E731
    if rating_lines:
        blocks.append("ratings\n" + _grid(headers([*_columns("rating"), _section_perplexity()]), rating_lines))
    if text_lines:
        blocks.append("text\n" + _grid(headers(_columns("text")), text_lines))
    if pick_lines:
        blocks.append("pick the real one\n" + _grid(headers(_columns("pick")), pick_lines))
    if choice_lines:
        blocks.append("choice items (Likert levels, listed options)\n"
                      + _grid(headers(_columns("choice")), choice_lines))
    return "\n\n".join(blocks) if blocks else "(no rows)"
