"""A trained twin: loaded from its run directory alone, it builds prompts exactly as training renders them,
scores continuations and generates.

    twin = Twin.load("runs/quickstart", records="data/records.jsonl")   # records: to look users up by id
    twin.predict(user="12", item="Heat (1995) (Action, Crime, Thriller): ")
    twin.generate(user="12", item="Heat (1995) (Action, Crime, Thriller): ", num_samples=4, temperature=0.8, seed=1)
    twin.rating_distributions([{"user": "12", "item": "..."}, {"profile": {}, "history": [], "item": "..."}])
    twin.rating_distribution(profile={"age": 25}, history=[{"continuation_prefix": "...", "continuation": "4.0"}],
                             item="Heat (1995) (Action, Crime, Thriller): ")

What a twin needs from its training data beyond the run's config, tokenizer and weights (the rating scale
as the data writes it, the task text, the language) is saved at training time in RUN/twin.json
(`write_twin_facts`), so a twin never re-reads or re-prepares the data it was trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

from usertwin.config import BATCHINGS, MAX_SAMPLES, Config, GenerateSettings, generate_settings_from
from usertwin.data import crowd, records
from usertwin.data.facts import rating_distribution, read_crowd_pools, read_twin_facts, twin_facts
from usertwin.data.timeline import Timeline, assign_splits, build_timelines
from usertwin.errors import UsertwinError
from usertwin.rundir import RunDir
from usertwin.sequences.fit import Prompt, trim_long_contexts
from usertwin.text.tokens import ItemLengths, measure_each, measure_next
from usertwin.twin.chat import chat_prompt, check_chat, check_text
from usertwin.twin.engine import Engine, check_choice, load_engine
from usertwin.twin.vllm import ENGINES, VllmGeneration, vllm_module


class PromptTooLong(UsertwinError):
    """The prompt plus the room asked for does not fit the twin's max_length, even without history."""


REQUEST_KEYS = ("user", "item", "context", "profile", "history", "target", "continuation", "seed")


def check_batching(choice: str, engine: str) -> None:
    """--batching against --engine: before the model loads (the CLI) and again in Twin.batching."""
    check_choice("batching", choice, BATCHINGS)
    if choice == "continuous" and engine == "vllm":
        raise UsertwinError("--batching continuous is usertwin's engine; vLLM batches continuously by itself: "
                            "drop --batching or --engine vllm")


class Twin:
    """A trained twin for code that embeds it. A user is looked up by id in the records file given to
    `load`, or described by `profile=` and `history=` (items in the records format; an item may name its
    collection with "type"). `item` is the new situation (a continuation prefix) and `context` the turns
    before it (each {"role" or "source", "content"}), placed after the whole history; `target=` instead names
    an existing item of a looked-up user (its earlier items are history).

    Every single-request method has a list form that runs its requests in batches (`generate_many`,
    `rating_distributions`, `scores`): a request is a dict of the single method's arguments."""

    def __init__(self, engine: Engine, facts: dict | None, timelines: list | None = None, records_path=None,
                 missing: str = ""):
        self.engine, self._facts, self.records_path, self._missing = engine, facts, records_path, missing
        self._by_user = {tl.user_id: tl for tl in timelines} if timelines is not None else None
        engine.scale = (facts or {}).get("rating_scale")

    @classmethod
    def load(cls, run_dir=None, records=None, *, cfg: Config | None = None, merge: bool = True,
             device: str | None = None, progress: bool = True, decode: str = "auto",
             prefill: str = "shared", engine: str = "usertwin", engine_args: dict | None = None) -> Twin:
        """From the run directory alone (config, tokenizer, best weights, twin.json); `records`: a records
        file to look users up by id (and, for runs without twin.json, to read the rating scale from).
        `cfg`: settings over the run's config (the CLI's flags); without a run, the base model it names
        (zero-shot). `merge`: a LoRA adapter merged into the weights; `device`: default the GPU when there is
        one; `progress`: transformers' loading bars; `decode`: dynamic (transformers' default cache) or
        static (a static KV cache, compiled into CUDA graphs on a GPU: several times faster at small batches once
        compiled); `prefill`: shared (prompts scored together that begin alike -- one user asked about many
        items -- read that beginning once) or each (every prompt read whole); `engine`: what generates, usertwin
        (transformers) or vllm (twin/vllm.py; `engine_args` go to vLLM's LLM)."""
        check_choice("engine", engine, ENGINES)
        on_vllm = engine == "vllm"
        if on_vllm:
            vllm_module()  # before the model loads: a missing vLLM says so at once
        run = RunDir(run_dir) if run_dir else None
        if records is not None and not Path(records).is_file():  # before the model loads: seconds, not a minute
            raise UsertwinError(f"records file {records} does not exist")
        core = load_engine(run_dir, cfg, merge=merge, device=device, progress=progress, decode=decode,
                             prefill=prefill)
        if on_vllm:
            core.vllm = VllmGeneration.load(core, run_dir, **(engine_args or {}))
        timelines = timelines_of(records, core) if records is not None else None
        if run and records is None and core.cfg.crowd_context != "none":
            core.crowd = read_crowd_pools(run.path)
        facts = (read_twin_facts(run.path) if run else None) or (twin_facts(timelines) if timelines else None)
        missing = "" if facts else (
            f"{run.twin_facts} is missing (the run was trained before twins kept it): pass "
            f"Twin.load({str(run.path)!r}, records=PATH) with the records file it trained on (its config names "
            f"{core.cfg.data!r})" if run else "a base model knows no data: pass Twin.load(RUN) or records=PATH")
        return cls(core, facts, timelines, records, missing)

    @classmethod
    def of_model(cls, cfg: Config, model, tokenizer, facts: dict | None = None) -> Twin:
        """A twin of a model in memory (the model being trained, scored on its validation split)."""
        return cls(Engine(cfg, model, tokenizer), facts)

    def with_facts_of(self, timelines) -> Twin:
        """When the run kept no twin.json (or there is no run): the facts of the data the twin is used on."""
        if self._facts is None:
            self._facts = twin_facts(timelines)
            self.engine.scale = self._facts.get("rating_scale")
        return self

    def prepare(self, progress: bool = False):
        """The twin's data (its config's `data`) prepared with its tokenizer, as training prepared it (the
        prepare cache is shared); a twin whose run kept no twin.json takes its facts from it."""
        from usertwin.sequences.prepare import prepare

        prep = prepare(self.cfg, tokenizer=self.engine.tokenizer, progress=progress)
        self.with_facts_of(prep.timelines)
        return prep

    @property
    def facts(self) -> dict:
        """What the twin keeps from its training data (data/facts.py): rating scale, task, language, ..."""
        if self._facts is None:
            raise UsertwinError(self._missing)
        return self._facts

    @property
    def cfg(self) -> Config:
        return self.engine.cfg

    @property
    def scale(self) -> list[str] | None:
        """The allowed ratings as the training data writes them; None when it had none."""
        return self.facts.get("rating_scale")

    # -- the engine's parts a caller needs, by name (nothing outside twin/ reaches into the Engine)

    def sized(self, gen: GenerateSettings, width: int | None = None, prompts: int | None = None) -> GenerateSettings:
        """`gen` with a number for batch_size auto (Engine.with_batch_size); given the job's number of `prompts`
        to generate for, --decode auto picks the decoding (Engine.plan_decode) and says so when it is static."""
        gen = self.engine.with_batch_size(gen, width)
        if prompts and self.engine.decoding == "auto" and self.engine.plan_decode(prompts, gen) == "static":
            print(f"decode auto: static ({prompts} prompts at batch {gen.batch_size}: the first batch compiles "
                  "CUDA graphs, about a minute; --decode dynamic skips that)", file=sys.stderr, flush=True)
        return gen

    def batching(self, choice: str) -> str:
        """--batching for a job: continuous (rows join and leave between decode steps) or static (a batch
        decodes until its longest row ends). auto: continuous, except where generation is vLLM's (it batches
        continuously by itself) or decodes with the compiled static cache (--decode static, or auto's choice:
        measured on an H100; continuous slots with CUDA graphs are not yet, --batching continuous --decode
        static picks them)."""
        vllm = self.engine.vllm is not None
        check_batching(choice, "vllm" if vllm else "usertwin")
        if choice == "auto":
            return "static" if vllm or self.engine.static else "continuous"
        return choice

    def running(self, choice: str, gen: GenerateSettings) -> int | None:
        """The prompts that decode at once under continuous batching (`gen.batch_size`; generate_after's
        `running`), or None for static batching (Twin.batching)."""
        return gen.batch_size if gen.generate and self.batching(choice) == "continuous" else None

    def lengths(self, timelines: list) -> list[ItemLengths]:
        """Each timeline's measured item lengths, in order (each distinct text tokenized once): fitted_prompt's
        `lengths` for a batch of situations."""
        return measure_each(self.engine.renderer, self.engine.tokenizer, timelines)

    def lengths_next(self, base: ItemLengths, tl: Timeline) -> ItemLengths:
        """The lengths of `tl`, the timeline `base` measures with one item more (text/tokens.py: measure_next)."""
        return measure_next(self.engine.renderer, self.engine.tokenizer, base, tl)

    def language_of(self, tl: Timeline) -> str:
        """The prompt language of a user (detected once per user id, then kept)."""
        return self.engine.renderer.language(tl)

    def ids_of(self, text: str) -> list[int]:
        """A continuation's tokens as training sees them: the text, then the end-of-turn."""
        return self.engine.continuation_ids(check_text(text, "continuation"))

    @functools.cached_property
    def longest_token_bytes(self) -> int:
        """The most UTF-8 bytes one token of the vocabulary stands for (an upper bound: byte-level and
        sentencepiece vocabularies spell a byte with one or more characters), so that a text of N bytes has at
        least N / this many tokens: a text far too long for max_length is refused without tokenizing it."""
        return max(len(t.encode("utf-8")) for t in self.engine.tokenizer.get_vocab())

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def rating_distribution_of(self, scores: list[float]) -> dict:
        """The scale's probabilities from its ratings' log-likelihoods (in scale order)."""
        return rating_distribution(self.scale, scores)

    def generate_after(self, prompts: list[list[int]], gen: GenerateSettings, seeds: list[int] | None = None,
                       stream: list | None = None, gone: list | None = None,
                       running: int | None = None) -> list[list[str]]:
        """`gen.num_samples` texts after each prompt's token ids, all decoding together (Engine.generate_ids:
        seeds, streaming and giving up on rows nobody waits for) -- or, with `running`, continuously: at most
        that many prompts at once, the next joining as rows finish (the same texts)."""
        return self.engine.generate_texts(prompts, gen, seeds, stream, gone, running)

    def decoder(self):
        """A continuous-batching decoder over this twin's model (twin/continuous.py): requests join and leave its
        running batch between decode steps, each getting the texts generate_after gives it alone. With --decode
        static its rows live in fixed slots and each decode step is a CUDA graph on a GPU (twin/slots.py)."""
        return self.engine.decoder()

    def text_of(self, ids: list[int]) -> str:
        """Generated token ids as generate_after returns their text (up to the end of turn, stripped)."""
        return self.engine.decode(ids)

    def score_after(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[list[tuple]]:
        """(log-probability, tokens) of each candidate continuation (token ids) after its prompt."""
        return self.engine.score_many(prompts, candidates)

    def rating_distributions_after(self, prompts: list[list[int]]) -> list[dict]:
        return self.engine.rating_distributions(prompts)

    def save_pretrained(self, tmp, dtype: str = "auto"):
        """The weights and tokenizer as a plain transformers model folder (`usertwin export`), written into `tmp`,
        a temporary folder the caller renames when complete."""
        return self.engine.save_pretrained(tmp, dtype)

    def timelines_of(self, path) -> list[Timeline]:
        """A records file's timelines as this twin reads them (see timelines_of)."""
        return timelines_of(path, self.engine)

    def trimmed(self, tl: Timeline) -> Timeline:
        """`tl` with any item whose context alone is too long cut to its newest turns, as training trims."""
        trim_long_contexts([tl], self.engine.renderer, self.engine.tokenizer, self.cfg.max_length)
        return tl

    @property
    def users(self) -> list[str]:
        """The ids of the records given at load, in file order."""
        return list(self._by_user or {})

    def timeline(self, user) -> Timeline:
        """A user of the records file given at load, by id (an int id is read as its text)."""
        if isinstance(user, Timeline):
            return user
        if user is None:
            raise UsertwinError("name the user (user=ID) or describe one with profile= and history=")
        if not isinstance(user, (str, int)) or isinstance(user, bool):
            raise UsertwinError(f"user= takes a user id (a string or an int), got {type(user).__name__}")
        if self._by_user is None:
            raise UsertwinError(f"user {user!r}: this twin was loaded without records; pass Twin.load(RUN, "
                                "records=PATH) to look users up by id, or describe the user with profile= and "
                                "history=")
        found = self._by_user.get(str(user))
        if found is None:
            some = ", ".join(repr(u) for u in list(self._by_user)[:3])
            raise UsertwinError(f"user {user!r} is not in {self.records_path} ({len(self._by_user)} users, "
                                f"e.g. {some})")
        return found

    # -- single requests

    def prompt(self, user=None, item: str | None = None, context=None, *, target: int | None = None,
               profile: dict | None = None, history: list | None = None, room: int = 0) -> list[int]:
        """The token ids the model sees before it writes; `room` tokens are kept free for generation."""
        tl, pos = self.situation(user, item, context, target, profile, history)
        return self.prompt_at(tl, pos, room)

    def prompt_at(self, tl: Timeline, pos: int, room: int = 0) -> list[int]:
        """The prompt of item `pos` of a timeline; refused when it cannot fit max_length even without history."""
        return self.fitted_prompt(tl, pos, room).ids

    def built_prompt(self, tl: Timeline, pos: int, room: int = 0, lengths: ItemLengths | None = None) -> Prompt:
        """The prompt of item `pos` as training renders it, history cut oldest first to leave `room` tokens; a
        target too long even alone keeps its whole prompt (see fitted_prompt for the refusing form)."""
        return self.engine.target_prompt(tl, pos, room, lengths)

    def fitted_prompt(self, tl: Timeline, pos: int, room: int = 0, lengths: ItemLengths | None = None) -> Prompt:
        """`lengths`: the timeline's measured item lengths when at hand (measure_each over a batch of users
        tokenizes each distinct text once)."""
        prompt = self.built_prompt(tl, pos, room, lengths)
        if len(prompt.ids) + room > self.cfg.max_length:
            raise PromptTooLong(
                f"user {tl.user_id!r}: the prompt of this item needs {len(prompt.ids)} tokens even without "
                f"history, and {room} more are kept for what follows it (the generation or a scored "
                f"continuation): more than the run's max_length {self.cfg.max_length}. Pass a shorter item or "
                "context, or fewer max_new_tokens")
        return prompt

    def predict(self, user=None, item: str = "", context=None, *, profile=None, history=None, seed=None,
                **gen) -> str:
        """The first generated text (greedy unless temperature > 0)."""
        return self.generate(user, item, context, profile=profile, history=history, seed=seed, **gen)[0]

    def generate(self, user=None, item: str = "", context=None, *, profile=None, history=None, seed=None,
                 **gen) -> list[str]:
        """`num_samples` texts (GenerateSettings: max_new_tokens, temperature, top_p, top_k, repetition_penalty,
        num_samples); when sampling, sample i draws with seed + i (unset: torch's global generator), so it is
        the same whether 1 or N samples are drawn."""
        request = dict(user=user, item=item, context=context, profile=profile, history=history, seed=seed)
        return self.generate_many([request], **gen)[0]

    def score(self, user=None, item: str = "", continuation: str = "", context=None, *, profile=None,
              history=None) -> float:
        """Log-likelihood of `continuation` (with its end-of-turn) as this user's next act."""
        request = dict(user=user, item=item, continuation=continuation, context=context, profile=profile,
                       history=history)
        return self.scores([request])[0]

    def rating_distribution(self, user=None, item: str = "", context=None, *, profile=None, history=None) -> dict:
        """The probability of every allowed rating as this user's next act, with the most likely and expected."""
        request = dict(user=user, item=item, context=context, profile=profile, history=history)
        return self.rating_distributions([request])[0]

    # -- lists of requests, in batches

    def generate_many(self, requests: list[dict], *, seed: int | None = None, **gen) -> list[list[str]]:
        """generate() for each request, `batch_size` prompts (x num_samples rows) decoding together. Sample i
        of request j draws with seed + j * MAX_SAMPLES + i, or with the request's own "seed" + i: the same
        whether 1 or N samples are drawn."""
        g = _settings(gen)
        seed = _settings({"seed": seed}).seed  # an int in range, as --seed takes it
        prompts = self._prompts(requests, g.max_new_tokens)
        seeds = [_request_seed(r, seed, j * MAX_SAMPLES) for j, r in enumerate(requests)]
        out = []
        g = self.engine.with_batch_size(g)
        for start in range(0, len(prompts), g.batch_size):
            chunk = seeds[start:start + g.batch_size]
            out += self.engine.generate_texts(prompts[start:start + g.batch_size], g,
                                        None if None in chunk else chunk)
        return out

    def rating_distributions(self, requests: list[dict], batch_size: int = 8) -> list[dict]:
        if not self.scale:
            raise UsertwinError("this twin's data has no rating collection: there is no rating scale to score")
        prompts = self._prompts(requests, max(len(self.engine.continuation_ids(s)) for s in self.scale))
        return [d for start in range(0, len(prompts), batch_size)
                for d in self.engine.rating_distributions(prompts[start:start + batch_size])]

    def scores(self, requests: list[dict], batch_size: int = 8) -> list[float]:
        """score() for each request (each with its "continuation"), `batch_size` prompts per forward."""
        conts = [[self.engine.continuation_ids(_text(r.get("continuation", ""), "continuation", j))]
                 for j, r in enumerate(requests)]
        prompts = self._prompts(requests, [len(c[0]) for c in conts])
        return [row[0][0] for start in range(0, len(prompts), batch_size)
                for row in self.engine.score_many(prompts[start:start + batch_size],
                                                  conts[start:start + batch_size])]

    def _prompts(self, requests, room: int | list = 0) -> list[list[int]]:
        """`room`: tokens kept free after each prompt (one number, or one per request): the generation, or the
        longest continuation scored after it, so that prompt and continuation fit max_length together."""
        if not isinstance(requests, (list, tuple)):
            raise UsertwinError(f"pass a list of requests (dicts of {', '.join(REQUEST_KEYS)}), "
                                f"got {type(requests).__name__}")
        out = []
        for j, r in enumerate(requests):
            r = _request(r, j)
            tl, pos = self.situation(r.get("user"), r.get("item"), r.get("context"), r.get("target"),
                                      r.get("profile"), r.get("history"))
            out.append(self.prompt_at(tl, pos, room[j] if isinstance(room, list) else room))
        return out

    # -- the timeline a prompt is rendered from

    def situation(self, user, item, context, target, profile, history) -> tuple[Timeline, int]:
        _check_situation(item, context, profile, history)
        for name, value in (("item", item), ("context", context), ("profile", profile), ("history", history)):
            check_text(value, name)
        explicit = profile is not None or history is not None
        tl = self._described(user, profile, history or []) if explicit else self.timeline(user)
        if target is None:
            return self.with_new_item(tl, item or "", context), len(tl.items)
        if explicit or item is not None or context is not None:
            raise UsertwinError("target= names an item of a looked-up user: pass user= alone with it")
        if not isinstance(target, int) or not 0 <= target < len(tl.items):
            raise UsertwinError(f"user {tl.user_id!r} has items 0..{len(tl.items) - 1}, not target {target}")
        return tl, target

    def _described(self, user, profile, history: list) -> Timeline:
        """A timeline from a profile and items in the records format, read and ordered as training read them."""
        uid = "twin" if user is None else str(user)
        task, language = self.facts.get("task") or "", self.facts.get("language")
        # the renderer caches a language per user id; a described user is anyone's, so detect afresh
        self.engine.renderer.forget_language(uid)
        role = self.facts.get("role") or "user"
        if not history:
            return Timeline(uid, dict(profile or {}), task, language, [], role=role)
        raw = {"user_hash": uid, "user": {"profile": dict(profile or {})},
               "task": {"description": task, "language": language, "role": role,
                        "task_behavior_collections": [_collection(it, self._default_collection())
                                                      for it in history]}}
        (tl,), _ = build_timelines([_read_record(raw)])
        if self.engine.crowd is not None:
            # a described history is all past: each item counts every rating of the others, as a new item does
            self.engine.crowd.annotate_known([tl], self.cfg.crowd_context)
        trim_long_contexts([tl], self.engine.renderer, self.engine.tokenizer, self.cfg.max_length)
        return tl

    def _default_collection(self) -> str:
        kinds = self.facts.get("collections") or []
        return kinds[0] if len(kinds) == 1 else ""

    def kind_after(self, tl: Timeline) -> str:
        """The collection of a user's next item when the request does not name one: that of their last item."""
        return tl.items[-1].collection if tl.items else self._default_collection()

    def with_new_item(self, tl: Timeline, prefix: str, context=None, kind: str | None = None,
                      continuation: str = "") -> Timeline:
        """The user's timeline plus a new item at its end (history: every item of the user). Its context loses
        its oldest turns when the item cannot fit max_length alone, as training trims its items."""
        new = records.Item(continuation=continuation, prefix=prefix, context=list(context or []),
                           collection=kind or self.kind_after(tl), position=len(tl.items))
        if new.context:
            alone = dataclasses.replace(tl, items=[new], context_cut={})
            trim_long_contexts([alone], self.engine.renderer, self.engine.tokenizer, self.cfg.max_length)
            if not new.context:  # the turn being answered is never dropped: a reply to nothing is no reply
                raise PromptTooLong(f"user {tl.user_id!r}: the last turn of the context alone does not fit the "
                                    f"run's max_length {self.cfg.max_length}: shorten it")
        return self.with_item(tl, new)

    def with_item(self, tl: Timeline, item) -> Timeline:
        """The timeline plus `item` at its end, with its crowd statistics (every other user's rating counts)."""
        stats = self.engine.crowd.with_new(tl, item, self.cfg.crowd_context) if self.engine.crowd else dict(tl.crowd)
        return dataclasses.replace(tl, items=tl.items + [item], crowd=stats)

    def chat(self, messages: list, user=None, profile: dict | None = None, history: list | None = None,
             **generation) -> str:
        """The twin's next line in a conversation of OpenAI-style messages: its own earlier turns are
        `assistant`, the other speaker's `user` (a `name` is that speaker's name, as a dialogue's sources are);
        a `system` message may describe the user (JSON object: the profile; other text: a description).
        Rendered as training renders a dialogue item: the turns are its context, the reply is its target."""
        g = _settings(generation)  # checked as generate checks them
        ids = chat_prompt(self, messages, user, profile, history, room=g.max_new_tokens)  # (messages checked)
        check_chat(self, "ask for its next act with Twin.predict(user=..., item=...) or Twin.rating_distribution")
        return self.engine.generate_texts([ids], g)[0][0]


def _settings(gen: dict) -> GenerateSettings:
    return generate_settings_from(gen, "generation settings")


def _request(r, j: int) -> dict:
    if not isinstance(r, dict):
        raise UsertwinError(f"request {j}: a request is a dict of {', '.join(REQUEST_KEYS)}, got {type(r).__name__}")
    unknown = sorted(set(r) - set(REQUEST_KEYS))
    if unknown:
        raise UsertwinError(f"request {j}: unknown key(s) {', '.join(unknown)}; a request takes "
                            f"{', '.join(REQUEST_KEYS)}")
    return r


def _request_seed(r: dict, seed: int | None, offset: int) -> int | None:
    own = r.get("seed") if isinstance(r, dict) else None
    if own is not None:
        return _settings({"seed": own}).seed  # an int in range, as --seed takes it
    return None if seed is None else seed + offset


def _text(value, name: str, j: int | None = None) -> str:
    if not isinstance(value, str):
        at = f"request {j}: " if j is not None else ""
        raise UsertwinError(f"{at}{name}= takes a string, got {type(value).__name__}")
    return check_text(value, name)


def _check_situation(item, context, profile, history) -> None:
    """Wrong types say which argument and what it takes (the renderer would fail far from the cause)."""
    if item is not None:
        _text(item, "item")
    if profile is not None and not isinstance(profile, dict):
        raise UsertwinError(f"profile= takes a dict (e.g. {{'age': 25}}), got {type(profile).__name__}")
    if history is not None and not isinstance(history, (list, tuple)):
        raise UsertwinError(f"history= takes a list of items in the records format, got {type(history).__name__}")
    if context is None:
        return
    if not isinstance(context, (list, tuple)):
        raise UsertwinError(f"context= takes a list of turns ({{'role' or 'source': ..., 'content': ...}}), "
                            f"got {type(context).__name__}")
    for k, turn in enumerate(context):
        if not (isinstance(turn, dict) and isinstance(turn.get("content"), str)
                and isinstance(turn.get("role", turn.get("source")), str)):
            raise UsertwinError(f"context[{k}] must be a turn {{'role' or 'source': str, 'content': str}}, "
                                f"got {turn!r}"[:300])


def _collection(item, default: str) -> dict:
    if not isinstance(item, dict):
        raise UsertwinError(f"a history item must be an object in the records format, got {type(item).__name__}")
    item = dict(item)
    return {"type": item.pop("type", default), "data": [item]}


def _read_record(raw: dict) -> records.Record:
    """Described items are checked and read exactly as a records file's items are; problems name the history."""
    try:
        json.dumps(raw)
    except (TypeError, ValueError) as e:
        raise UsertwinError(f"the profile and history passed to the twin must be JSON data: {e}") from None
    return records.from_raw(raw, "the history passed to the twin")


def timelines_of(path, engine: Engine) -> list[Timeline]:
    """The records file's timelines, trimmed to max_length as prepare trims them. With crowd context, its items
    get their statistics by the split rule (so a target's prompt is the one predict used), and a new item asked
    about counts every rating of the file's other users (data/crowd.py)."""
    loaded = records.load(path, on_error=engine.cfg.on_error)
    timelines, _ = build_timelines(loaded.records)
    if engine.cfg.crowd_context != "none":
        engine.crowd = crowd.annotate_split(timelines, assign_splits(timelines, engine.cfg), engine.cfg.crowd_context)
    trim_long_contexts(timelines, engine.renderer, engine.tokenizer, engine.cfg.max_length)
    return timelines


# ---------------------------------------------------------------- conversations (Twin.chat, usertwin serve)


