"""Prompt styles and ablations: a sample or window -> text segments with the exact spans of every target.

A rendered sequence is a list of segments whose concatenation is the text the model sees:

    header                      system part: profile + task (+ the history block in the block layout)
    item prompt, item target    one per item: the user turn (context, the item, the instruction line),
    join, item prompt, target   then the assistant turn (the continuation + the end-of-turn token)
    ...

Each item is rendered the same way whether it is history or a target, and items are joined by the same
`join` text, so the sample "target k with items 0..k-1 as history" is exactly a prefix of the timeline
window holding items 0..k. This is what makes timeline (multi-target) training exact: each target's loss in a
window equals its loss as a sample of its own with the same earlier items as history.
A dialogue line (context shown) is a conversation, not an item block: the other speakers' lines since the
twin's previous line are a user turn, each line of the twin an assistant turn. A line right after an earlier
line of its conversation in the sequence brings only the turns new since then, so consecutive lines of a
conversation render each turn once; where a line opens its conversation in a sequence it shows the context
heading, the last max_context_turns turns before it (a marker line when earlier ones are left out) and the
instruction, once for the conversation. A line's rendering depends
only on the item before it, never on which items carry loss, so the prefix property holds as for items.
How the parts are written (headings, profile lines, the item's lines) is a prompt style
(`usertwin.text.styles`); the Renderer decides which parts appear and looks the style up by name.
With a chat template the turns go through the tokenizer's own template; the template is taken apart once,
with marker strings, into header / item / join pieces, and checked against a full rendering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from usertwin.config import RenderSettings, SampleSettings
from usertwin.data.crowd import count_bucket
from usertwin.data.timeline import is_dialogue_item, is_own_turn
from usertwin.errors import UsertwinError
from usertwin.text.styles import LANGUAGES, OMITTED, get_style, phrases_for

_KANA = re.compile(r"[\u3040-\u30ff]")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def check(cfg: RenderSettings) -> None:
    """Refuses render settings this module cannot render (also when built directly, without the CLI)."""
    cfg.parts()
    get_style(cfg.prompt_style)  # refuses an unknown style, listing the registered ones
    if cfg.language not in ("auto", *LANGUAGES):
        raise UsertwinError(f"unknown language {cfg.language!r}; choose auto, {', '.join(LANGUAGES)}")
    if cfg.history_layout not in ("turns", "block"):
        raise UsertwinError(f"unknown history_layout {cfg.history_layout!r}; choose turns or block")
    if cfg.crowd_context not in ("none", "item", "item_and_user"):
        raise UsertwinError(f"crowd_context must be none, item or item_and_user, not {cfg.crowd_context!r}")
    if cfg.chat_template not in ("auto", "none"):
        raise UsertwinError(f"chat_template must be auto or none, not {cfg.chat_template!r}")


@dataclass
class Segment:
    text: str
    kind: str  # header | join | prompt | target
    position: int | None = None  # timeline position of the item it belongs to


@dataclass
class Rendered:
    segments: list
    history_dropped: int = 0

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def target_spans(self) -> list[tuple[int, int, int]]:
        """(start, end, position) character spans of every loss-bearing segment."""
        spans, at = [], 0
        for s in self.segments:
            if s.kind == "target":
                spans.append((at, at + len(s.text), s.position))
            at += len(s.text)
        return spans


# ---------------------------------------------------------------- chat format


@dataclass
class ChatFormat:
    """The pieces of a chat template around system text, user text and assistant text."""

    header_pre: str
    header_post: str  # after the system text, up to the first user text
    prompt_post: str  # after a user text, up to the assistant text (the generation prompt)
    eot: str  # closes an assistant text; carries loss with the target
    join: str  # after eot, up to the next user text
    name: str = "plain"


def plain_format(eos: str | None) -> ChatFormat:
    return ChatFormat("", "\n\n", "\n", eos or "", "\n\n", name="plain")


_MARK = "\u27e6UT{}\u27e7"  # marker strings that no template rewrites


def chat_format(tokenizer) -> ChatFormat:
    """Take the tokenizer's chat template apart into header / item / join pieces, and check them."""
    m = [_MARK.format(i) for i in range(7)]
    pieces = re.split("(" + "|".join(re.escape(x) for x in m) + ")", _template_text(tokenizer, m))
    if pieces[1::2] != m:
        raise UsertwinError("the tokenizer's chat template reorders or drops messages; use --chat_template none")
    p0, p1, p2, p3, p4, p5, p6, p7 = pieces[0::2]  # p0 SYS p1 U1 p2 A1 p3 U2 p4 A2 p5 U3 p6 A3 p7
    eot = _end_of_turn(p5, tokenizer)
    if not eot and getattr(tokenizer, "eos_token", None):
        # a template that closes assistant turns with nothing special: the eos token ends a target
        eot_text, join = tokenizer.eos_token, p5
    else:
        eot_text, join = eot, p5[len(eot):]
    if p3 != p5:
        raise UsertwinError("the chat template renders turns differently by position; use --chat_template none")
    name = getattr(tokenizer, "name_or_path", "") or "chat"
    return ChatFormat(p0, p1, p4, eot_text, join, name=f"chat template of {name}")


def _template_text(tokenizer, m: list[str]) -> str:
    """A system text and three user/assistant turn pairs, their contents the markers `m`, through the template."""
    msgs = [{"role": "system", "content": m[0]}]
    for k in range(3):
        msgs += [{"role": "user", "content": m[1 + 2 * k]}, {"role": "assistant", "content": m[2 + 2 * k]}]
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # templates without a system role: fold it into the first user turn
        msgs = msgs[1:]
        msgs[0] = {"role": "user", "content": m[0] + "\n\n" + m[1]}
        return tokenizer.apply_chat_template(msgs, tokenize=False)


def _end_of_turn(gap: str, tokenizer) -> str:
    """The special token (as text) that opens `gap`, e.g. <|im_end|>; '' if none."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()}
    best = ""
    for s in specials:
        if s and gap.startswith(s) and len(s) > len(best):
            best = s
    return best


# ---------------------------------------------------------------- text of the parts


def detect_language(tl) -> str:
    if tl.language in LANGUAGES:
        return tl.language
    sample = "".join(it.continuation + it.prefix for it in tl.items[:50])
    if _KANA.search(sample):
        return "ja"
    if len(_CJK.findall(sample)) > 0.2 * max(1, len(sample)):
        return "zh"
    return "en"


class Renderer:
    """Renders samples and windows of timelines through one prompt style and one chat format."""

    def __init__(self, cfg: RenderSettings, tokenizer=None):
        check(cfg)
        self.cfg = cfg
        # a sample setting, read here because it shapes the rendering; RenderSettings alone: the default
        self.max_context_turns = getattr(cfg, "max_context_turns", SampleSettings.max_context_turns)
        self.use_profile, self.use_history, self.use_context = cfg.parts()
        self.style = get_style(cfg.prompt_style)
        eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
        has_template = tokenizer is not None and getattr(tokenizer, "chat_template", None)
        if cfg.chat_template == "auto" and has_template:
            self.fmt = chat_format(tokenizer)
        else:
            self.fmt = plain_format(eos)
        self._lang_cache: dict[str, str] = {}

    def language(self, tl) -> str:
        if self.cfg.language != "auto":
            return self.cfg.language
        lang = self._lang_cache.get(tl.user_id)
        if lang is None:
            lang = self._lang_cache[tl.user_id] = detect_language(tl)
        return lang

    def forget_language(self, user_id: str) -> None:
        """Detect the user's language afresh next time (a described user is anyone's: its id says nothing)."""
        self._lang_cache.pop(user_id, None)

    # -- the parts

    def system_text(self, tl, history: list[int] = ()) -> str:
        """Profile, task and (block layout only) the `history` items, as the style writes them."""
        ph = phrases_for(self.language(tl), tl.role)
        blocks = []
        if self.use_profile and tl.profile:
            blocks.append(self.style.profile(tl.profile, ph))
        if tl.task:
            blocks.append(self.style.task(tl.task, ph))
        if history:
            blocks.append(self.style.history([tl.items[p] for p in history], ph))
        return self.style.system([b for b in blocks if b])

    def user_text(self, tl, pos: int) -> str:
        item = tl.items[pos]
        ph = phrases_for(self.language(tl), tl.role)
        turns = self._speakers(tl, item, ph) if self.use_context and item.context else []
        return self.style.user_turn(item, turns, ph, self.crowd_lines(tl, pos, ph))

    def crowd_lines(self, tl, pos: int, ph: dict) -> list[str]:
        """The item's crowd statistics (data/crowd.py annotates the timeline), as the style writes them."""
        crowd = tl.crowd.get(pos) if self.cfg.crowd_context != "none" else None
        if crowd is None:
            return []
        lines = [self._stat(crowd.mean, crowd.count, "crowd", ph)]
        if crowd.user_count is not None:
            lines.append(self._stat(crowd.user_mean, crowd.user_count, "own", ph))
        return lines

    def _stat(self, mean, count: int, which: str, ph: dict) -> str:
        shown = None if mean is None or not count else f"{mean:.1f}"
        return self.style.crowd_line(which, shown, count_bucket(count) if count else "0", ph)

    def _speakers(self, tl, item, ph: dict) -> list[tuple[str, object]]:
        """(speaker, content) of each context turn: the user's own turns are "you", anonymous role-tagged
        turns "other"."""
        name = str(tl.profile.get("name", "")).strip() if isinstance(tl.profile, dict) else ""
        turns = []
        for turn in item.context:
            own = is_own_turn(turn, name)
            who = ph["you"] if own else str(turn.get("source") or ph["other"]).strip()
            if not own and turn.get("source") is None and turn.get("role"):
                who = ph["other"]
            turns.append((who, turn.get("content", "")))
        return turns

    # -- sequences

    def header(self, tl, history: list[int] = ()) -> str:
        f = self.fmt
        return f.header_pre + self.system_text(tl, history) + f.header_post

    def item_segments(self, tl, pos: int, first: bool, target: bool, after: int | None = None) -> list[Segment]:
        """Item `pos`'s segments; `after`: the item just before it in the sequence (a dialogue line right after
        an earlier line of its conversation renders only the turns new since then)."""
        if self.converses(tl, pos):
            return self._line_segments(tl, pos, first, target, after)
        f = self.fmt
        segs = [] if first else [Segment(f.join, "join", pos)]
        segs.append(Segment(self.user_text(tl, pos) + f.prompt_post, "prompt", pos))
        cont = tl.items[pos].continuation + f.eot
        segs.append(Segment(cont, "target" if target else "history", pos))
        return segs

    # -- conversations: each turn once, the other speakers' lines as user turns, the twin's as assistant turns

    def converses(self, tl, pos: int) -> bool:
        """Whether item `pos` renders as a line of a conversation (a dialogue item, context shown)."""
        return self.use_context and is_dialogue_item(tl.items[pos])

    def follows(self, tl, q: int | None, p: int) -> bool:
        """Whether item p, right after item q in a sequence, continues q's conversation there."""
        return q is not None and self.converses(tl, p) and tl.conversations.chain(q, p)

    def follow_texts(self, tl, pos: int) -> list[str] | None:
        """Texts of item `pos`'s prompt segments right after item pos-1 of its conversation; None where it
        opens its conversation."""
        if not pos or not self.follows(tl, pos - 1, pos):
            return None
        return [seg.text for seg in self._line_segments(tl, pos, True, True, pos - 1)[:-1]]

    def _line_segments(self, tl, pos: int, first: bool, target: bool, after: int | None) -> list[Segment]:
        f = self.fmt
        segs = []
        pairs = self._pairs(tl, pos, after)
        for n, (user, line) in enumerate(pairs):
            if n or not first:
                segs.append(Segment(f.join, "join", pos))
            segs.append(Segment(user + f.prompt_post, "prompt", pos))
            kind = "target" if target and n == len(pairs) - 1 else "history"
            segs.append(Segment(line + f.eot, kind, pos))
        return segs

    def _pairs(self, tl, pos: int, after: int | None) -> list[tuple[str, str]]:
        """(user text, the twin's line) turn pairs that bring item `pos`'s line into the sequence: the turns
        new since `after` when it continues that item's conversation, else the conversation's last
        max_context_turns turns before the line (with a marker when earlier ones are left out)."""
        ph = phrases_for(self.language(tl), tl.role)
        if self.follows(tl, after, pos):
            return [pair for r in range(after + 1, pos + 1)
                    for pair in self._turn_pairs(tl, r, tl.items[r].context[tl.conversations.new_from[r]:],
                                                 False, "", ph)]
        ctx = tl.items[pos].context
        keep = max(0, min(len(ctx), self.max_context_turns))
        cut = keep < len(ctx) or pos in tl.context_cut
        return self._turn_pairs(tl, pos, ctx[len(ctx) - keep:], True, OMITTED[self.language(tl)] if cut else "", ph)

    def _turn_pairs(self, tl, pos: int, turns: list, opening: bool, omitted: str, ph: dict) -> list:
        name = str(tl.profile.get("name", "")).strip() if isinstance(tl.profile, dict) else ""
        item = tl.items[pos]
        pairs, lines = [], []
        for turn in turns + [None]:  # None: the item's own line
            if turn is not None and not is_own_turn(turn, name):
                lines.append(self._speaker(turn, ph))
                continue
            about = item.prefix.strip() if turn is None else ""
            user = self.style.conversation_turn(lines, opening and not pairs, omitted, about, item, ph)
            pairs.append((user, item.continuation if turn is None else str(turn.get("content", ""))))
            lines = []
        return pairs

    def _speaker(self, turn: dict, ph: dict) -> tuple[str, object]:
        """(speaker, content) of another speaker's turn: its source name, else "other" for a role-tagged turn."""
        source = turn.get("source")
        who = str(source).strip() if source is not None and str(source).strip() else ph["other"]
        return who, turn.get("content", "")

    def messages(self, tl, items: list[int]) -> list[dict]:
        """The chat messages of a turns-layout sequence (system, then user/assistant pairs): what the chat
        template renders into the same text."""
        msgs = [{"role": "system", "content": self.system_text(tl)}]
        for j, pos in enumerate(items):
            if self.converses(tl, pos):
                pairs = self._pairs(tl, pos, items[j - 1] if j else None)
            else:
                pairs = [(self.user_text(tl, pos), tl.items[pos].continuation)]
            for user, line in pairs:
                msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": line}]
        return msgs

    def render(self, tl, items: list[int], targets) -> Rendered:
        """Render `items` (positions, increasing) of a timeline; `targets` carry loss.

        In the turns layout every item is a turn pair; in the block layout the non-target items form the
        history block of the header and only the targets are turns.
        """
        targets = set(targets)
        block = self.cfg.history_layout == "block"
        history_in_header = [p for p in items if p not in targets] if block else []
        segs = [Segment(self.header(tl, history_in_header), "header")]
        prev = None
        for pos in items:
            if block and pos not in targets:
                continue
            segs += self.item_segments(tl, pos, prev is None, pos in targets, prev)
            prev = pos
        return Rendered(segs)

    def render_sample(self, tl, sample) -> Rendered:
        return self.render(tl, list(sample.history) + [sample.target], [sample.target])

    def render_window(self, tl, window) -> Rendered:
        return self.render(tl, window.items, window.targets)
