"""`usertwin predict` and the `Twin` API: generation and likelihood scoring with the training renderer.

For every target of a split the prompt is rendered exactly as in training (same ablation, style and
history strategy), with the user's strictly earlier items — train and validation included — as history,
cut to fit `max_length`. Each output line holds the reference, the generated prediction(s), the
teacher-forced loss of the reference, and for ratings the probability of every allowed rating.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import torch

from usertwin.atomic import recover_dir, write_text
from usertwin.config import Config, GenerateSettings, from_mapping, load_yaml
from usertwin.data.prepare import fit_sample, prepare
from usertwin.data.timeline import Sample, select_history
from usertwin.errors import UsertwinError
from usertwin.lock import acquire
from usertwin.rundir import RunDir
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder, load_tokenizer
from usertwin.train.model import TargetLoss, causal_lm, load_model

RATING_KINDS = ("rating",)


def load_run_config(run_dir) -> Config:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UsertwinError(f"{run} is not a run directory (no config.yaml): pass the --output_dir of a train run")
    return from_mapping(load_yaml(run / "config.yaml"), str(run / "config.yaml"))


def load_twin_model(cfg: Config, run_dir=None):
    """The run's best weights (adapter on its base model, or full weights), else the base model."""
    best = recover_dir(Path(run_dir) / "best") if run_dir else None
    if best is not None and (best / "adapter_config.json").is_file():
        from peft import PeftModel

        # sdpa: scoring passes its own block masks, which flash kernels do not take
        base = load_model(cfg.model, cfg.dtype, attention="sdpa", trust_remote_code=cfg.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(best))
    elif best is not None and (best / "config.json").is_file():
        model = load_model(str(best), cfg.dtype, attention="sdpa", trust_remote_code=cfg.trust_remote_code)
    else:
        if run_dir:
            raise UsertwinError(f"{best} holds no weights: the run has not finished an evaluation yet")
        model = load_model(cfg.model, cfg.dtype, attention="sdpa", trust_remote_code=cfg.trust_remote_code)
    model.eval()
    if torch.cuda.is_available():
        model.cuda()
    return model


def rating_scale(timelines) -> list[str] | None:
    """The allowed ratings as they are written in the data (e.g. "0.5" ... "5.0"), if the data has ratings."""
    values = {}
    for tl in timelines:
        for it in tl.items:
            if "rating" in it.collection:
                try:
                    values.setdefault(float(it.continuation), it.continuation)
                except ValueError:
                    return None
    if not values or len(values) > 40:
        return None
    return [values[v] for v in sorted(values)]


class Predictor:
    """A model + the training renderer: prompts, generation, scoring."""

    def __init__(self, cfg: Config, model, tokenizer, prep=None):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.renderer = Renderer(cfg, tokenizer)
        self.encoder = SequenceEncoder(self.renderer, tokenizer)
        self.prep = prep if prep is not None else prepare(cfg, tokenizer=tokenizer, progress=False)
        self.scale = rating_scale(self.prep.timelines)
        eot = self.renderer.fmt.eot
        ids = tokenizer(eot, add_special_tokens=False)["input_ids"] if eot else []
        self.eot_id = ids[0] if len(ids) == 1 else tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_id

    @property
    def device(self):
        return next(self.model.parameters()).device

    # -- prompts

    def sample_for(self, tl, target: int, room: int = 0) -> Sample:
        """History as in training (strategy of the config), cut to leave `room` tokens for generation."""
        hist = select_history(tl, target, self.cfg, self.cfg.sample_seed)
        sample = Sample(tl.user_id, target, hist, "predict")
        cfg = self.cfg
        if room:
            cfg = from_mapping({"max_length": max(1, cfg.max_length - room)}, "predict", cfg)
        fitted = fit_sample(cfg, self.renderer, tl, self.prep.lengths[tl.user_id], sample, self.tokenizer)
        return fitted[0] if fitted else Sample(tl.user_id, target, [], "predict")

    def encode(self, tl, sample: Sample):
        return self.encoder.encode(tl, list(sample.history) + [sample.target], [sample.target])

    # -- model calls

    @torch.no_grad()
    def reference_loss(self, enc) -> tuple[float, int]:
        """Teacher-forced mean loss per token of the target (with its end-of-turn), as in training."""
        ids = torch.tensor([enc.input_ids], device=self.device)
        labels = torch.tensor([enc.labels], device=self.device)
        losses = TargetLoss(self.model)(ids, labels)
        return losses.mean().item(), len(losses)

    def score(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[tuple[float, int]]:
        """(sum of log-probabilities, token count) of each candidate continuation after one prompt."""
        return self.score_many([prompt_ids], [candidates])[0]

    @torch.no_grad()
    def score_many(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[list[tuple]]:
        """Score several prompts' candidate continuations in one forward. Each row holds one prompt (left
        padded) followed by all its candidates one after another; a block mask lets every candidate see its
        prompt and itself only, with positions continuing from the prompt's end — as if each candidate ran
        alone after its prompt, without copying the prompt or its cache."""
        dev, n = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        spans = []  # per row: (start, tokens) of each candidate after the prompt block
        for cands in candidates:
            at, row = width, []
            for c in cands:
                row.append((at, c))
                at += len(c)
            spans.append(row)
        total = max(row[-1][0] + len(row[-1][1]) for row in spans)
        ids = torch.full((n, total), self.pad_id, dtype=torch.long)
        pos = torch.zeros((n, total), dtype=torch.long)
        seg = torch.full((n, total), -2, dtype=torch.long)  # -1: prompt, j: candidate j, -2: padding
        for i, (p, row) in enumerate(zip(prompts, spans)):
            pad = width - len(p)
            ids[i, pad:width] = torch.tensor(p)
            pos[i, pad:width] = torch.arange(len(p))
            seg[i, pad:width] = -1
            for j, (start, c) in enumerate(row):
                ids[i, start:start + len(c)] = torch.tensor(c)
                pos[i, start:start + len(c)] = torch.arange(len(p), len(p) + len(c))
                seg[i, start:start + len(c)] = j
        seg = seg.to(dev)  # the (rows x total x total) mask is built where it is used
        q, k = seg[:, :, None], seg[:, None, :]
        causal = torch.ones(total, total, dtype=torch.bool, device=dev).tril()
        # a token sees earlier prompt tokens, and earlier tokens of its own candidate; padding sees itself
        allowed = causal & (k == -1) & (q != -2) | causal & (q == k) & (q >= 0) | torch.eye(total, dtype=torch.bool, device=dev)
        lm = causal_lm(self.model)
        dtype = lm.get_output_embeddings().weight.dtype
        # additive form: sdpa and eager attention both take it
        mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, torch.finfo(dtype).min)
        hidden = getattr(lm, lm.base_model_prefix)(input_ids=ids.to(dev), position_ids=pos.to(dev),
                                                   attention_mask=mask[:, None],
                                                   use_cache=False).last_hidden_state
        # candidate token t is predicted at the position before it (the prompt's last token for the first one);
        # the output head runs on those positions only
        where = [(i, width - 1 if j == 0 else start + j - 1, tok)
                 for i, row in enumerate(spans) for start, c in row for j, tok in enumerate(c)]
        rows_, cols, toks = (torch.tensor(x, device=dev) for x in zip(*where))
        logits = lm.get_output_embeddings()(hidden[rows_, cols]).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        picked = torch.log_softmax(logits, dim=-1).gather(1, toks[:, None])[:, 0].double().cpu().tolist()
        out, k_ = [], 0
        for row in spans:
            scores = []
            for _, c in row:
                scores.append((sum(picked[k_:k_ + len(c)]), len(c)))
                k_ += len(c)
            out.append(scores)
        return out

    def ids_of(self, text: str) -> list[int]:
        """A continuation's tokens as training sees them: the text, then the end-of-turn."""
        return self.tokenizer(text + self.renderer.fmt.eot, add_special_tokens=False)["input_ids"]

    def rating_distribution(self, prompt_ids: list[int]) -> dict:
        scores = [s for s, _ in self.score(prompt_ids, [self.ids_of(t) for t in self.scale])]
        return self.distribution(scores)

    def distribution(self, scores: list[float]) -> dict:
        """Normalised probabilities of the allowed ratings from their log-likelihoods."""
        top = max(scores)
        probs = [math.exp(s - top) for s in scores]
        z = sum(probs)
        probs = [p / z for p in probs]
        values = [float(t) for t in self.scale]
        return {"scale": values, "probs": [round(p, 6) for p in probs],
                "most_likely": values[max(range(len(probs)), key=probs.__getitem__)],
                "expected": round(sum(v * p for v, p in zip(values, probs)), 6)}

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], gen: GenerateSettings) -> list[list[str]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, device=self.device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues every row at its end
            ids[i, width - len(p):] = torch.tensor(p, device=self.device)
            mask[i, width - len(p):] = 1
        sample = gen.temperature > 0
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen.max_new_tokens,
                                  do_sample=sample, temperature=gen.temperature if sample else None,
                                  top_p=gen.top_p if sample else None, num_return_sequences=gen.num_samples,
                                  eos_token_id=self.eot_id, pad_token_id=self.pad_id)
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=False)
        eot = self.renderer.fmt.eot
        clean = [(t.split(eot)[0] if eot else t).replace(self.tokenizer.pad_token or "\0", "").strip()
                 for t in texts]
        return [clean[i * gen.num_samples:(i + 1) * gen.num_samples] for i in range(len(prompts))]


# ---------------------------------------------------------------- the predict command


def _done(path: Path) -> set:
    """Targets already in a (possibly cut-off) output file. A torn last line (the process was killed while
    writing it) and anything after it are dropped; the file is then rewritten atomically, so a second
    crash here leaves either the old file or the repaired one."""
    done = set()
    if not path.is_file():
        return done
    good, torn = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
                key = (row["user"], row["target_index"])
            except (json.JSONDecodeError, TypeError, KeyError):
                torn = True
                break
            if not line.endswith("\n"):
                torn, line = True, line + "\n"
            if key in done:  # never twice
                torn = True
                continue
            done.add(key)
            good.append(line)
    if torn:
        write_text(path, "".join(good))
    return done


def _output_lock(output: Path):
    """One writer per output: a run directory is locked as a whole (training may write there too);
    a predictions file elsewhere gets its own lock beside it."""
    run = output.parent
    if (run / "config.yaml").is_file():
        return acquire(RunDir(run).lock, f"run directory {run}", hint="write elsewhere with -o")
    return acquire(output.with_name(f".{output.name}.lock"), f"predictions file {output}",
                   hint="write elsewhere with -o")


def distractors(prep, split: str, k: int, seed: int) -> dict:
    """For each target: k other continuations, preferably other users' for the same item, else random ones
    from the split; never the reference text itself."""
    by_item, pool = {}, []
    for tl in prep.timelines:
        for pos, lab in enumerate(prep.splits[tl.user_id]):
            if lab == split:
                it = tl.items[pos]
                by_item.setdefault(it.prefix, []).append((tl.user_id, it.continuation))
                pool.append(it.continuation)
    out = {}
    for tl in prep.timelines:
        for pos, lab in enumerate(prep.splits[tl.user_id]):
            if lab != split:
                continue
            ref = tl.items[pos].continuation
            rng = random.Random(f"{seed}:{tl.user_id}:{pos}")
            same = sorted({c for u, c in by_item.get(tl.items[pos].prefix, []) if u != tl.user_id and c != ref})
            picks = rng.sample(same, min(k, len(same)))
            others = sorted(set(pool) - {ref} - set(picks))
            picks += rng.sample(others, min(k - len(picks), len(others)))
            out[(tl.user_id, pos)] = picks
    return out


def predict_split(pred: Predictor, split: str, output, gen: GenerateSettings, pick_k: int = 3,
                  generate: bool = True, limit: int | None = None, progress: bool = True) -> int:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with _output_lock(output):
        return _predict_split(pred, split, output, gen, pick_k, generate, limit, progress)


def _predict_split(pred, split, output: Path, gen, pick_k, generate, limit, progress) -> int:
    done = _done(output)
    targets = [(tl, pos) for tl in pred.prep.timelines for pos, lab in enumerate(pred.prep.splits[tl.user_id])
               if lab == split and (tl.user_id, pos) not in done]
    if limit is not None:
        targets = targets[:max(0, limit - len(done))]
    picks = distractors(pred.prep, split, pick_k, pred.cfg.seed) if pick_k else {}
    room = gen.max_new_tokens if generate else 0
    bar = targets
    if progress:
        from tqdm import tqdm

        bar = tqdm(targets, desc=f"predict {split}", unit="target")
    written = 0
    # appended, not atomic, by design: every flushed batch survives a kill, and the next run resumes after
    # the last complete line (_done drops a torn one)
    with open(output, "a", encoding="utf-8") as f:
        for start in range(0, len(targets), gen.batch_size):
            chunk = targets[start:start + gen.batch_size]
            rows = _rows(pred, chunk, split, room, picks)
            if generate:
                outs = pred.generate([r.pop("_prompt") for r in rows], gen)
                for r, o in zip(rows, outs):
                    r["predictions"] = o
            for r in rows:
                r.pop("_prompt", None)
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            written += len(rows)
            if progress:
                bar.update(len(rows))
    if progress:
        bar.close()
    return written


def _rows(pred: Predictor, chunk: list, split: str, room: int, picks: dict) -> list[dict]:
    """Every likelihood of a batch of targets from one forward: for each target the reference (its
    teacher-forced loss), the allowed ratings and the pick-the-real-one candidates, after its prompt."""
    todo = []
    for tl, pos in chunk:
        sample = pred.sample_for(tl, pos, room)
        enc = pred.encode(tl, sample)
        prompt = enc.input_ids[:enc.targets[-1][1]]
        item = tl.items[pos]
        texts = [item.continuation] + list(picks.get((tl.user_id, pos), []))
        if pred.scale and "rating" in item.collection:
            texts += [t for t in pred.scale if t not in texts]
        todo.append((tl, pos, sample, prompt, texts))
    scores = pred.score_many([t[3] for t in todo], [[pred.ids_of(x) for x in t[4]] for t in todo])
    return [_row(pred, tl, pos, split, sample, prompt, dict(zip(texts, sc)), picks)
            for (tl, pos, sample, prompt, texts), sc in zip(todo, scores)]


def _row(pred: Predictor, tl, pos: int, split: str, sample, prompt: list, scored: dict, picks: dict) -> dict:
    item = tl.items[pos]
    ref_total, n = scored[item.continuation]
    row = {"user": tl.user_id, "target_index": pos, "split": split, "collection": item.collection,
           "item": item.prefix, "language": pred.renderer.language(tl),
           "prompt_hash": hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:16],
           "reference": item.continuation, "predictions": [], "loss": round(-ref_total / n, 6), "n_tokens": n,
           "history_len": len(sample.history), "user_items": len(tl.items), "_prompt": prompt}
    if pred.scale and "rating" in item.collection:
        row["rating"] = pred.distribution([scored[t][0] for t in pred.scale])
    if picks.get((tl.user_id, pos)):
        cands = [item.continuation] + picks[(tl.user_id, pos)]
        norm = [scored[c][0] / max(1, scored[c][1]) for c in cands]  # length-normalised
        chosen = max(range(len(norm)), key=norm.__getitem__)
        row["pick"] = {"k": len(cands) - 1, "chosen": chosen, "correct": chosen == 0,
                       "scores": [round(x, 4) for x in norm]}
    return row


# ---------------------------------------------------------------- the Python API


class Twin:
    """A trained twin, for code that embeds it:

        twin = Twin.load("runs/quickstart")
        twin.predict(user="12", item="Heat (1995) (Action, Crime, Thriller): ")
        twin.rating_distribution(user="12", item="Heat (1995) (Action, Crime, Thriller): ")
    """

    def __init__(self, predictor: Predictor):
        self.p = predictor

    @classmethod
    def load(cls, run_dir) -> Twin:
        cfg = load_run_config(run_dir)
        best = Path(run_dir) / "best"
        tok = load_tokenizer(str(best) if (best / "tokenizer_config.json").is_file() else cfg.model,
                             cfg.trust_remote_code)
        return cls(Predictor(cfg, load_twin_model(cfg, run_dir), tok))

    def _timeline_with(self, user, item: str, context=None):
        """The user's whole timeline plus the new item at its end (history = every item of the user)."""
        from usertwin.data.records import Item

        tl = self.p.prep.timeline(user) if isinstance(user, str) else user
        kind = tl.items[-1].collection if tl.items else ""
        new = Item(continuation="", prefix=item, context=list(context or []), collection=kind,
                   position=len(tl.items))
        from usertwin.data.timeline import Timeline

        return Timeline(tl.user_id, tl.profile, tl.task, tl.language, tl.items + [new], tl.record_index)

    def _prompt(self, user, item, context=None) -> list[int]:
        from usertwin.text.tokens import measure

        tl = self._timeline_with(user, item, context)
        target = len(tl.items) - 1
        hist = select_history(tl, target, self.p.cfg, self.p.cfg.sample_seed)
        fitted = fit_sample(self.p.cfg, self.p.renderer, tl, measure(self.p.renderer, self.p.tokenizer, tl),
                            Sample(tl.user_id, target, hist), self.p.tokenizer)
        sample = fitted[0] if fitted else Sample(tl.user_id, target, [])
        enc = self.p.encode(tl, sample)
        return enc.input_ids[:enc.targets[-1][1]]

    def predict(self, user, item: str, context=None, **gen) -> str:
        return self.p.generate([self._prompt(user, item, context)], GenerateSettings(**gen))[0][0]

    def score(self, user, item: str, continuation: str, context=None) -> float:
        """Log-likelihood of `continuation` (with its end-of-turn) as this user's next act."""
        return self.p.score(self._prompt(user, item, context), [self.p.ids_of(continuation)])[0][0]

    def rating_distribution(self, user, item: str, context=None) -> dict:
        if not self.p.scale:
            raise UsertwinError("this twin's data has no rating collection")
        return self.p.rating_distribution(self._prompt(user, item, context))
