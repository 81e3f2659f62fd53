"""Baselines on the same split as the twin: every target labelled `split` by `timeline.assign_splits`.

Every baseline is fit on what the twin's prompts show for the scored split (`FIT_ON`): for test targets the
train and validation items (a test target's history holds both), for validation targets the train items; the
scored split's own continuations are never seen.

Ratings (items of a rating collection, `records.is_rating`, whose continuation is a number). An item is
`item_key(item)`: its collection and `metadata.movie_id` where the data has one, else its prefix.

* `global_mean`: the mean fit rating mu.
* `user_mean`: the user's mean fit rating, else mu.
* `item_mean`: the item's mean fit rating, else mu.
* `user_item_bias`: LensKit's damped bias model (`lenskit.basic.BiasScorer`): mu + b_i + b_u with
  b_i = sum(r - mu) / (n_i + damping), b_u = sum(r - mu - b_i) / (n_u + damping); an unseen user or item has
  bias 0.
* `biased_mf`: LensKit's biased matrix factorisation trained by alternating least squares
  (`lenskit.als.BiasedMFScorer`) on the ratings less the damped bias; its initial embeddings come from the
  seed (the config's `seed`), so a run reproduces.
* `item_knn`: LensKit's item-item kNN in explicit mode (`lenskit.knn.ItemKNNScorer`): the user's fit ratings
  of the item's most similar items (mean-centred cosine), weighted by similarity.

MF and kNN cannot score an unseen user or item (nor kNN an item with no rated neighbour): LensKit's fallback
(`predict_pipeline`'s FallbackScorer) gives those targets the damped bias prediction, so every target has a
finite prediction. Each LensKit prediction is clipped to the range of the fit ratings.

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

Settings (DAMPING, FEATURES, REGULARIZATION, EPOCHS, NEIGHBOURS below) were tuned on ml-latest-small's
validation split, fit on train (benchmarks/tune_baselines.py, benchmarks/results/tune_baselines.md); the
test split was never used to choose them. Measured on ml-latest-small (610 users, 100,836 ratings), default
time split 70/15/15, seed 42, test split (15,125 targets, 1,236 of them of a movie not in the fit data;
fit on the 85,711 train + validation ratings; tests/eval/test_baselines.py checks these):

    baseline        RMSE    MAE     within 0.5
    global_mean     1.0673  0.8363  0.400
    user_mean       0.9614  0.7477  0.426
    item_mean       1.0187  0.7851  0.429
    user_item_bias  0.8920  0.6888  0.456   (LensKit BiasScorer, damping 5)
    biased_mf       0.8779  0.6739  0.469   (LensKit BiasedMFScorer, 50 features, regularization 0.1)
    item_knn        0.8890  0.6795  0.468   (LensKit ItemKNNScorer, 40 neighbours)

(The hand-written bias model this replaced, 10 alternating rounds with lambda 10 / 15: 0.8956, 0.6945.)
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from usertwin.config import Config
from usertwin.data import choices, records
from usertwin.data.records.format import item_key  # noqa: F401  (public here too: baselines.item_key)
from usertwin.data.timeline import assign_splits, build_timelines
from usertwin.errors import UsertwinError
from usertwin.eval import metrics
from usertwin.text.render import detect_language

RATING_BASELINES = ("global_mean", "user_mean", "item_mean", "user_item_bias", "biased_mf", "item_knn")
TEXT_BASELINES = ("copy_last_item", "item_most_frequent")
# what the baselines of a split are fit on: everything before that split's period, which is what the twin's
# prompts show as history there (a test target's history holds train and validation items)
FIT_ON = {"train": ("train",), "val": ("train",), "test": ("train", "val")}
# the LensKit models' settings, tuned on ml-latest-small's VALIDATION split (fit on train; see
# benchmarks/tune_baselines.py), never on test
DAMPING = 5.0  # BiasScorer / BiasedMFScorer: a priori mean ratings per user and per item
FEATURES = 50  # BiasedMFScorer embedding size
REGULARIZATION = 0.1  # BiasedMFScorer L2
EPOCHS = 10  # BiasedMFScorer ALS epochs
NEIGHBOURS = 40  # ItemKNNScorer max neighbours


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
    """Fitted rating baselines: the three means here, the LensKit models as trained LensKit pipelines."""

    mu: float
    user_mean: dict = field(default_factory=dict)
    item_mean: dict = field(default_factory=dict)
    pipelines: dict = field(default_factory=dict)  # {baseline name: trained lenskit Pipeline}
    item_ids: dict = field(default_factory=dict)  # {item key: LensKit item id (int)}
    low: float = -np.inf
    high: float = np.inf

    def predict(self, name: str, user: str, key) -> float:
        return self.predict_many(name, [(user, key)])[0]

    def predict_many(self, name: str, pairs) -> list[float]:
        """Predictions of baseline `name` for (user, item key) pairs, in order."""
        if name == "global_mean":
            return [self.mu] * len(pairs)
        if name == "user_mean":
            return [self.user_mean.get(u, self.mu) for u, _ in pairs]
        if name == "item_mean":
            return [self.item_mean.get(k, self.mu) for _, k in pairs]
        if name in self.pipelines:
            return self._lenskit(self.pipelines[name], pairs)
        raise ValueError(f"unknown rating baseline {name!r}; choose one of {', '.join(RATING_BASELINES)}")

    def _lenskit(self, pipe, pairs) -> list[float]:
        from lenskit import batch
        from lenskit.data import ItemList, RecQuery
        from lenskit.diagnostics import DataWarning

        # an item the fit data never saw gets an id of its own that LensKit does not know (it falls back)
        unseen = {}
        ids = [self.item_ids.get(k) if k in self.item_ids else
               unseen.setdefault(k, len(self.item_ids) + len(unseen)) for _, k in pairs]
        by_user = defaultdict(dict)
        for (u, _), i in zip(pairs, ids):
            by_user[u][i] = None  # each item once per query (LensKit's fallback reindexes by item id)
        queries = [(RecQuery(user_id=u), ItemList(item_ids=list(items))) for u, items in by_user.items()]
        with warnings.catch_warnings():  # kNN on a user without fit ratings: expected, the fallback answers
            warnings.filterwarnings("ignore", "no query items", DataWarning)
            scores = batch.predict(pipe, queries, n_jobs=1).to_df()  # n_jobs=1: in this process, reproducible
        got = dict(zip(zip(scores["user_id"].astype(str), scores["item_id"].astype(int)),
                       scores["score"].astype(float)))
        return [float(min(max(got[(str(u), i)], self.low), self.high)) for (u, _), i in zip(pairs, ids)]


def _means(keys, r, n):
    return np.bincount(keys, weights=r, minlength=n) / np.maximum(np.bincount(keys, minlength=n), 1)


def fit_ratings(train, damping: float = DAMPING, features: int = FEATURES, regularization: float = REGULARIZATION,
                epochs: int = EPOCHS, neighbours: int = NEIGHBOURS, seed: int = 42) -> RatingModel:
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
    return RatingModel(mu=mu, user_mean=dict(zip(users, _means(u, r, len(users)).tolist())),
                       item_mean=dict(zip(items, _means(i, r, len(items)).tolist())),
                       pipelines=_lenskit_pipelines([users[j] for j in u], i, r, damping, features, regularization,
                                                    epochs, neighbours, seed),
                       item_ids=i_ix, low=float(r.min()), high=float(r.max()))


def _lenskit_pipelines(users, items, ratings, damping, features, regularization, epochs, neighbours, seed) -> dict:
    """LensKit's damped bias, biased MF (ALS) and item kNN, each a rating-prediction pipeline trained on the
    ratings. MF and kNN cannot score a user or item the data never saw (nor kNN an item without rated
    neighbours): LensKit's fallback fills those in from the same damped bias model."""
    import pandas as pd
    from lenskit.als import BiasedMFScorer
    from lenskit.basic import BiasScorer
    from lenskit.data import from_interactions_df
    from lenskit.knn import ItemKNNScorer
    from lenskit.pipeline import predict_pipeline
    from lenskit.training import TrainingOptions

    df = pd.DataFrame({"user_id": users, "item_id": items, "rating": ratings})
    # LensKit takes one rating per (user, item): a user who rated an item again counts with the latest rating
    # (the triples are in timeline order); the means above count every rating
    data = from_interactions_df(df.drop_duplicates(["user_id", "item_id"], keep="last"))
    scorers = {"user_item_bias": (BiasScorer(damping=damping), False),
               "biased_mf": (BiasedMFScorer(features=features, regularization=regularization, epochs=epochs,
                                            damping=damping), True),
               "item_knn": (ItemKNNScorer(k=neighbours), True)}
    out = {}
    for name, (scorer, fallback) in scorers.items():
        pipe = predict_pipeline(scorer, fallback=BiasScorer(damping=damping) if fallback else False, name=name)
        with warnings.catch_warnings():  # kNN on ratings of one value (tiny data) says centering is moot
            warnings.filterwarnings("ignore", "Ratings seem to have the same value")
            pipe.train(data, TrainingOptions(rng=seed))  # the seed of ALS's initial embeddings
        out[name] = pipe
    return out


def describe(split: str, fit_kwargs: dict | None = None) -> dict:
    """{baseline name: (what it was fit on, the model and its settings)}, which the command prints."""
    kw = {"damping": DAMPING, "features": FEATURES, "regularization": REGULARIZATION, "epochs": EPOCHS,
          "neighbours": NEIGHBOURS, "seed": 42, **(fit_kwargs or {})}
    fit = " + ".join(FIT_ON[split])
    return {"global_mean": (fit, "mean of the fit ratings"),
            "user_mean": (fit, "the user's mean rating, else the global mean"),
            "item_mean": (fit, "the item's mean rating, else the global mean"),
            "user_item_bias": (fit, f"LensKit BiasScorer, damping {kw['damping']:g}"),
            "biased_mf": (fit, f"LensKit BiasedMFScorer (ALS), {kw['features']} features, regularization "
                               f"{kw['regularization']:g}, {kw['epochs']} epochs, damping {kw['damping']:g}, "
                               f"seed {kw['seed']}; unseen user/item: the damped bias"),
            "item_knn": (fit, f"LensKit ItemKNNScorer, {kw['neighbours']} neighbours (explicit); no neighbour, "
                              "unseen user/item: the damped bias"),
            "copy_last_item": ("the user's own earlier items", "the latest earlier continuation, same collection"),
            "item_most_frequent": (fit, "the item's most frequent continuation, else the collection's")}


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
        pairs = [(t.tl.user_id, item_key(t.item)) for t in rating_t]
        for name in RATING_BASELINES:
            out[name] = list(zip(rating_t, model.predict_many(name, pairs)))
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
            # every rating baseline predicts a mean, not a scale value: no exact accuracy, as for the twin's
            # expected rating (evaluate shows "-" there too)
            out[name] = metrics.rating_metrics([t.rating for t, _ in pairs], [p for _, p in pairs], on_scale=False)
            continue
        langs = sorted({t.language for t, _ in pairs})
        for lang in langs:
            sub = [(t, p) for t, p in pairs if t.language == lang]
            key = name if len(langs) == 1 else f"{name} [{lang}]"
            out[key] = metrics.text_metrics([t.item.continuation for t, _ in sub], [p for _, p in sub], lang)
    return out


def prediction_rows(preds: dict, split: str) -> dict:
    """{baseline name: rows shaped like `usertwin predict`'s (user, split, target_index, item, reference; a rating
    baseline's number as `rating.expected`, a text baseline's text as `predictions`)}, so that `usertwin evaluate
    TWIN --against BASELINE.jsonl` compares the two target by target."""
    out = {}
    for name, pairs in preds.items():
        rows = []
        for t, p in pairs:
            row = {"user": t.tl.user_id, "target_index": t.position, "split": split,
                   "collection": t.item.collection, "item": t.item.prefix, "language": t.language,
                   "reference": t.item.continuation, "user_items": len(t.tl.items), "baseline": name}
            row.update({"rating": {"expected": p}} if name in RATING_BASELINES else {"predictions": [p]})
            rows.append(row)
        out[name] = rows
    return out


def run_baselines(cfg: Config, split: str = "test", rows: dict | None = None, **fit_kwargs) -> dict:
    """{baseline name: metrics} on exactly the targets of `split` (what the twin is evaluated on), each with
    `fit_on` (the splits it was fit on, or the user's own history). `fit_kwargs` go to `fit_ratings` (damping,
    features, regularization, epochs, neighbours; seed defaults to the config's). `rows`, when given, is filled
    with `prediction_rows` of the rating and text baselines."""
    timelines, splits = load_split(cfg)
    fit_kwargs.setdefault("seed", cfg.seed)
    preds = predictions(timelines, splits, split, **fit_kwargs)
    if rows is not None:
        rows.update(prediction_rows(preds, split))
    out = score(preds)
    fit = describe(split, fit_kwargs)
    out = {name: {**m, "fit_on": fit[name.split(" [")[0]][0]} for name, m in out.items()}
    return {**out, **{name: {**m, "fit_on": " + ".join(FIT_ON[split])}
                      for name, m in choice_baselines(timelines, splits, split).items()}}


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
    fit_kwargs.setdefault("seed", cfg.seed)
    for name, pairs in predictions(timelines, splits, split, **fit_kwargs).items():
        for t, p in pairs:
            yield {"baseline": name, "user": t.tl.user_id, "target_index": t.position, "split": split,
                   "collection": t.item.collection, "item": t.item.prefix, "language": t.language,
                   "reference": t.item.continuation, "predictions": [f"{p:.4f}" if t.rating is not None else p],
                   "history_len": t.position, "user_items": len(t.tl.items)}
