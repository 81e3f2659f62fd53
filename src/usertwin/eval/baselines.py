"""Baselines on the same split as the twin: every target labelled `split` by `timeline.assign_splits`.

Every baseline is fit on what the twin's prompts show for the scored split (`FIT_ON`): for test targets the
train and validation items (a test target's history holds both), for validation targets the train items; the
scored split's own continuations are never seen.

Ratings (items of a rating collection, `records.is_rating`, whose continuation is a number):

* `global_mean`: the mean fit rating mu.
* `user_mean`: the user's mean fit rating, else mu.
* `item_mean`: the item's mean fit rating, else mu (an item is its collection + continuation_prefix).
* `user_item_bias`: r = mu + b_u + b_i, fit by alternating least squares with L2 regularisation
  (b_i = sum(r - mu - b_u) / (lambda_item + n_i), then b_u likewise with lambda_user), clipped to the range
  of the fit ratings.

Text (every other target):

* `copy_last_item`: the continuation of the user's latest earlier item of the same collection (any split:
  that is the user's own history, which the twin sees too); "" when there is none.
* `item_most_frequent`: the most frequent fit continuation of the same item (for dialogue, whose items
  have no prefix, the most frequent line), else of the collection; ties go to the first seen.

Choice items (a Likert level or one of a question's listed options, `usertwin.data.choices`; `choice_baselines`):

* `question_most_frequent`: the option answered most often to the same question (collection, question text,
  prefix) in the fit splits, else the collection's most answered option among the item's, else the first
  option; ties go to the earlier option.
* `user_most_frequent_level` (Likert items only): the user's most frequent fit level, else the collection's,
  else the first level.

Measured on ml-latest-small (610 users, 100,836 ratings), default time split 70/15/15, seed 42, test split
(15,125 targets; fit on the 85,711 train + validation ratings), lambda_item 10, lambda_user 15, 10 ALS rounds
(tests/test_baselines.py checks these):

    baseline        RMSE    MAE     exact  within 0.5
    global_mean     1.0673  0.8363  0.000  0.400
    user_mean       0.9614  0.7477  0.002  0.426
    item_mean       1.0187  0.7851  0.031  0.429
    user_item_bias  0.8956  0.6945  0.000  0.450

(Fit on the 70,586 train ratings only, as before, they were 1.0680, 0.9799, 1.0291, 0.9141: seeing less than the
twin made them look worse than they are.)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from usertwin.config import Config
from usertwin.data import choices, records
from usertwin.data.timeline import assign_splits, build_timelines
from usertwin.errors import UsertwinError
from usertwin.eval import metrics
from usertwin.text.render import detect_language

RATING_BASELINES = ("global_mean", "user_mean", "item_mean", "user_item_bias")
TEXT_BASELINES = ("copy_last_item", "item_most_frequent")
# what the baselines of a split are fit on: everything before that split's period, which is what the twin's
# prompts show as history there (a test target's history holds train and validation items)
FIT_ON = {"train": ("train",), "val": ("train",), "test": ("train", "val")}


@dataclass
class Target:
    """One target of the evaluated split: the user's timeline, the item's position, its kind."""

    tl: object  # timeline.Timeline
    position: int
    rating: float | None  # the reference as a number for rating targets, else None
    language: str

    @property
    def item(self):
        return self.tl.items[self.position]


def item_key(item) -> tuple[str, str]:
    return item.collection, item.prefix


def rating_value(item) -> float | None:
    """The item's rating when it belongs to a rating collection and its continuation is a number."""
    return metrics.as_number(item.continuation) if item.is_rating else None


# ---------------------------------------------------------------- data


def load_split(cfg: Config):
    """(timelines, split labels per user) exactly as prepare builds them."""
    loaded = records.load(cfg.data, on_error=cfg.on_error)
    timelines, _ = build_timelines(loaded.records)
    return timelines, assign_splits(timelines, cfg)


def targets_of(timelines, splits, split: str = "test") -> list[Target]:
    out = []
    for tl in timelines:
        lang = detect_language(tl)
        for pos, label in enumerate(splits[tl.user_id]):
            if label == split:
                out.append(Target(tl, pos, rating_value(tl.items[pos]), lang))
    return out


def train_ratings(timelines, splits, fit_on=("train",)) -> list[tuple[str, tuple, float]]:
    """(user, item key, rating) of every rating in the `fit_on` splits: all that the rating baselines see."""
    out = []
    for tl in timelines:
        for item, label in zip(tl.items, splits[tl.user_id]):
            r = rating_value(item) if label in fit_on else None
            if r is not None:
                out.append((tl.user_id, item_key(item), r))
    return out


# ---------------------------------------------------------------- rating baselines


@dataclass
class RatingModel:
    """Fitted parameters of the four rating baselines."""

    mu: float
    user_mean: dict = field(default_factory=dict)
    item_mean: dict = field(default_factory=dict)
    user_bias: dict = field(default_factory=dict)
    item_bias: dict = field(default_factory=dict)
    low: float = -np.inf
    high: float = np.inf

    def predict(self, name: str, user: str, key) -> float:
        if name == "global_mean":
            return self.mu
        if name == "user_mean":
            return self.user_mean.get(user, self.mu)
        if name == "item_mean":
            return self.item_mean.get(key, self.mu)
        if name == "user_item_bias":
            r = self.mu + self.user_bias.get(user, 0.0) + self.item_bias.get(key, 0.0)
            return float(min(max(r, self.low), self.high))
        raise ValueError(f"unknown rating baseline {name!r}; choose one of {', '.join(RATING_BASELINES)}")


def _means(keys, r, n):
    return np.bincount(keys, weights=r, minlength=n) / np.maximum(np.bincount(keys, minlength=n), 1)


def fit_ratings(train, lambda_item: float = 10.0, lambda_user: float = 15.0, rounds: int = 10) -> RatingModel:
    """Fit every rating baseline on (user, item key, rating) triples (the splits before the scored one)."""
    if not train:
        raise UsertwinError("no ratings to fit the rating baselines on: the splits before the scored one (train; "
                            "train and val for test) hold none")
    users = sorted({u for u, _, _ in train})
    items = sorted({k for _, k, _ in train})
    u_ix, i_ix = {u: j for j, u in enumerate(users)}, {k: j for j, k in enumerate(items)}
    u = np.array([u_ix[x] for x, _, _ in train])
    i = np.array([i_ix[k] for _, k, _ in train])
    r = np.array([x for _, _, x in train], dtype=np.float64)
    mu = float(r.mean())
    n_u, n_i = np.bincount(u, minlength=len(users)), np.bincount(i, minlength=len(items))
    b_u, b_i = np.zeros(len(users)), np.zeros(len(items))
    for _ in range(rounds):
        b_i = np.bincount(i, weights=r - mu - b_u[u], minlength=len(items)) / (lambda_item + n_i)
        b_u = np.bincount(u, weights=r - mu - b_i[i], minlength=len(users)) / (lambda_user + n_u)
    return RatingModel(mu=mu, user_mean=dict(zip(users, _means(u, r, len(users)).tolist())),
                       item_mean=dict(zip(items, _means(i, r, len(items)).tolist())),
                       user_bias=dict(zip(users, b_u.tolist())), item_bias=dict(zip(items, b_i.tolist())),
                       low=float(r.min()), high=float(r.max()))


# ---------------------------------------------------------------- text baselines


def most_frequent_continuations(timelines, splits, fit_on=("train",)) -> tuple[dict, dict]:
    """(item key -> most frequent continuation, collection -> most frequent continuation) in the `fit_on`
    splits."""
    by_item, by_collection = defaultdict(Counter), defaultdict(Counter)
    for tl in timelines:
        for item, label in zip(tl.items, splits[tl.user_id]):
            if label in fit_on and rating_value(item) is None:
                by_item[item_key(item)][item.continuation] += 1
                by_collection[item.collection][item.continuation] += 1
    top = lambda counts: {k: c.most_common(1)[0][0] for k, c in counts.items()}  # noqa: E731
    return top(by_item), top(by_collection)


def copy_last_item(t: Target) -> str:
    """The continuation of the user's latest item strictly before the target, in the same collection."""
    for pos in range(t.position - 1, -1, -1):
        if t.tl.items[pos].collection == t.item.collection:
            return t.tl.items[pos].continuation
    return ""


# ---------------------------------------------------------------- running


def predictions(timelines, splits, split: str = "test", **fit_kwargs) -> dict:
    """{baseline name: [(target, prediction)]}: floats for rating targets, texts for text targets."""
    targets = targets_of(timelines, splits, split)
    rating_t = [t for t in targets if t.rating is not None]
    likert = choices.likert_scales(timelines)  # choice targets have their own baselines (choice_baselines)
    text_t = [t for t in targets if t.rating is None and not _is_choice(t, likert)]
    out = {}
    if rating_t:
        model = fit_ratings(train_ratings(timelines, splits, FIT_ON[split]), **fit_kwargs)
        for name in RATING_BASELINES:
            out[name] = [(t, model.predict(name, t.tl.user_id, item_key(t.item))) for t in rating_t]
    if text_t:
        by_item, by_collection = most_frequent_continuations(timelines, splits, FIT_ON[split])
        out["copy_last_item"] = [(t, copy_last_item(t)) for t in text_t]
        out["item_most_frequent"] = [
            (t, by_item.get(item_key(t.item), by_collection.get(t.item.collection, ""))) for t in text_t]
    return out


def score(preds: dict) -> dict:
    """{name: metrics}; text baselines over several languages get one entry per language, `name [lang]`."""
    out = {}
    for name, pairs in preds.items():
        if name in RATING_BASELINES:
            out[name] = metrics.rating_metrics([t.rating for t, _ in pairs], [p for _, p in pairs])
            continue
        langs = sorted({t.language for t, _ in pairs})
        for lang in langs:
            sub = [(t, p) for t, p in pairs if t.language == lang]
            key = name if len(langs) == 1 else f"{name} [{lang}]"
            out[key] = metrics.text_metrics([t.item.continuation for t, _ in sub], [p for _, p in sub], lang)
    return out


def run_baselines(cfg: Config, split: str = "test", **fit_kwargs) -> dict:
    """{baseline name: metrics} on exactly the targets of `split` (what the twin is evaluated on).
    `fit_kwargs` go to `fit_ratings` (lambda_item, lambda_user, rounds)."""
    timelines, splits = load_split(cfg)
    return {**score(predictions(timelines, splits, split, **fit_kwargs)),
            **choice_baselines(timelines, splits, split)}


# ---------------------------------------------------------------- choice baselines


CHOICE_BASELINES = ("question_most_frequent", "user_most_frequent_level")


def _question_key(item) -> tuple:
    return item.collection, choices.question_of(item), item.prefix


def choice_predictions(timelines, splits, split: str = "test") -> dict:
    """{baseline name: [(Target, Choice, chosen option index)]} for the choice targets of `split` whose answer
    is one of their options; fit on the FIT_ON splits' choice items."""
    likert = choices.likert_scales(timelines)
    by_question, by_collection, by_user = defaultdict(Counter), defaultdict(Counter), defaultdict(Counter)
    for tl in timelines:
        for item, label in zip(tl.items, splits[tl.user_id]):
            c = choices.choice_of(item, likert, tl.choice_sets) if label in FIT_ON[split] else None
            if c is None or c.answer is None:
                continue
            answer = choices.norm(item.continuation)
            by_question[_question_key(item)][answer] += 1
            by_collection[item.collection][answer] += 1
            if c.likert:
                by_user[tl.user_id][answer] += 1
    out: dict = {name: [] for name in CHOICE_BASELINES}
    for t in targets_of(timelines, splits, split):
        c = choices.choice_of(t.item, likert, t.tl.choice_sets)
        if c is None or c.answer is None:
            continue
        fallback = choices.most_frequent(by_collection[t.item.collection], c.options)
        fallback = 0 if fallback is None else fallback
        top = choices.most_frequent(by_question[_question_key(t.item)], c.options)
        out["question_most_frequent"].append((t, c, fallback if top is None else top))
        if c.likert:
            own = choices.most_frequent(by_user[t.tl.user_id], c.options)
            out["user_most_frequent_level"].append((t, c, fallback if own is None else own))
    return {name: preds for name, preds in out.items() if preds}


def _is_choice(t: Target, likert: dict) -> bool:
    c = choices.choice_of(t.item, likert, t.tl.choice_sets)
    return c is not None and c.answer is not None


def choice_baselines(timelines, splits, split: str = "test") -> dict:
    """{baseline name: metrics.choice_metrics} of the choice baselines on the choice targets of `split`."""
    return {name: metrics.choice_metrics([{"choice": {"options": list(c.options), "chosen": k,
                                                      "answer": c.answer, "likert": c.likert}}
                                          for _, c, k in preds])
            for name, preds in choice_predictions(timelines, splits, split).items()}


def baseline_rows(cfg: Config, split: str = "test", **fit_kwargs):
    """Rows shaped like a predictions file's, one per (baseline, target), with a `baseline` key; rating predictions
    are written with 4 decimals (evaluate_rows would snap them to the scale: use run_baselines for RMSE)."""
    timelines, splits = load_split(cfg)
    for name, pairs in predictions(timelines, splits, split, **fit_kwargs).items():
        for t, p in pairs:
            yield {"baseline": name, "user": t.tl.user_id, "target_index": t.position, "split": split,
                   "collection": t.item.collection, "item": t.item.prefix, "language": t.language,
                   "reference": t.item.continuation, "predictions": [f"{p:.4f}" if t.rating is not None else p],
                   "history_len": t.position, "user_items": len(t.tl.items)}
