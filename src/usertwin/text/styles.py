"""Prompt styles and fixed phrases: how a prompt's parts are written out, in each language.

A style is a PromptStyle subclass registered by name (`@register_style`); the Renderer decides which parts
appear and asks the style how to write them. A new style is one class here: the `prompt_style` setting's
choices ask this registry, which this module hands to usertwin.config when it is imported (config, the lower
layer, never imports text/). This module builds on nothing but the standard library, the error type and the
settings module.
"""

from __future__ import annotations

import json
import re

from usertwin.config import set_prompt_styles
from usertwin.errors import UsertwinError

STYLES: dict[str, PromptStyle] = {}  # name -> style, filled by @register_style below
LANGUAGES = ("en", "zh", "ja")

PHRASES = {
    "en": {
        "instruction": {
            "movie_rating": "Predict the rating this user gives to this movie:",
            "movie_review": "Write the review this user writes for this movie:",
            "dialogue": "Write the next line this user says:",
            "questionnaire": "Answer as this user:",
            "": "Predict this user's response:",
        },
        "you": "You",
        "other": "Other",
        "profile": "User profile",
        "task": "Task",
        "history": "History",
        "context": "Conversation so far",
        "item": "Now",
        "time": "Time",
        "crowd": "Others: {mean} avg, {count} ratings",
        "crowd_none": "Others: no ratings",
        "own": "You so far: {mean} avg, {count} ratings",
        "own_none": "You so far: no ratings",
    },
    "zh": {
        "instruction": {
            "movie_rating": "预测该用户给这部电影的评分：",
            "movie_review": "写出该用户对这部电影的短评：",
            "dialogue": "写出该用户接下来说的话：",
            "questionnaire": "以该用户的身份回答：",
            "": "预测该用户的回应：",
        },
        "you": "你",
        "other": "对方",
        "profile": "用户信息",
        "task": "任务",
        "history": "历史",
        "context": "对话上下文",
        "item": "当前",
        "time": "时间",
        "crowd": "其他用户：平均 {mean}，{count} 个评分",
        "crowd_none": "其他用户：暂无评分",
        "own": "你此前：平均 {mean}，{count} 个评分",
        "own_none": "你此前：暂无评分",
    },
    "ja": {
        "instruction": {
            "movie_rating": "このユーザーがこの映画に付ける評価を予測してください：",
            "movie_review": "このユーザーがこの映画に書くレビューを書いてください：",
            "dialogue": "このユーザーの次の発話を書いてください：",
            "questionnaire": "このユーザーとして回答してください：",
            "": "このユーザーの応答を予測してください：",
        },
        "you": "あなた",
        "other": "相手",
        "profile": "ユーザープロフィール",
        "task": "タスク",
        "history": "履歴",
        "context": "これまでの会話",
        "item": "現在",
        "time": "時刻",
        "crowd": "他のユーザー：平均 {mean}、{count} 件",
        "crowd_none": "他のユーザー：評価なし",
        "own": "あなたのこれまで：平均 {mean}、{count} 件",
        "own_none": "あなたのこれまで：評価なし",
    },
}

# The phrases that name the twin, for a role other than "user" (a record's task.role): a movie character is
# told to write "the next line this character says", not a user's. Each entry replaces its key of PHRASES.
ROLE_PHRASES = {
    "character": {
        "en": {
            "instruction": {
                "movie_rating": "Predict the rating this character gives to this movie:",
                "movie_review": "Write the review this character writes for this movie:",
                "dialogue": "Write the next line this character says:",
                "questionnaire": "Answer as this character:",
                "": "Predict this character's response:",
            },
            "profile": "Character profile",
        },
        "zh": {
            "instruction": {
                "movie_rating": "预测该角色给这部电影的评分：",
                "movie_review": "写出该角色对这部电影的短评：",
                "dialogue": "写出该角色接下来说的台词：",
                "questionnaire": "以该角色的身份回答：",
                "": "预测该角色的回应：",
            },
            "profile": "角色信息",
        },
        "ja": {
            "instruction": {
                "movie_rating": "このキャラクターがこの映画に付ける評価を予測してください：",
                "movie_review": "このキャラクターがこの映画に書くレビューを書いてください：",
                "dialogue": "このキャラクターの次のセリフを書いてください：",
                "questionnaire": "このキャラクターとして回答してください：",
                "": "このキャラクターの応答を予測してください：",
            },
            "profile": "キャラクタープロフィール",
        },
    },
}


def phrases_for(language: str, role: str = "user") -> dict:
    """The fixed phrases of a language, with those that name the twin following its role."""
    named = ROLE_PHRASES.get(role)
    return {**PHRASES[language], **named[language]} if named else PHRASES[language]


OMITTED = {"en": "(earlier turns omitted)", "zh": "（更早的对话已省略）", "ja": "（これより前の会話は省略）"}


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}_{k}" if prefix else str(k))
    elif isinstance(obj, list):
        yield prefix, ", ".join(str(x) for x in obj)
    else:
        yield prefix, obj


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


# ---------------------------------------------------------------- prompt styles


def style_names() -> tuple[str, ...]:
    """The registered prompt styles: the choices of the `prompt_style` setting."""
    return tuple(STYLES)


set_prompt_styles(style_names)  # the prompt_style setting's choices: asked at use time, so a later style counts


def register_style(cls):
    """Class decorator: make a PromptStyle subclass available as `prompt_style=cls.name`."""
    STYLES[cls.name] = cls()
    return cls


def get_style(name: str) -> PromptStyle:
    if name not in STYLES:
        raise UsertwinError(f"unknown prompt_style {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]


class PromptStyle:
    """How the parts of a prompt are written out. The Renderer decides which parts appear (the ablation) and
    who said each context turn; a style only writes them, so a new style overrides just what it changes.

    `phrases` is the PHRASES entry of the timeline's language and role (`phrases_for`).
    """

    name = ""

    def heading(self, part: str, phrases: dict) -> str:
        """The line that opens a part: profile, task, history or context (a key of `phrases`)."""
        raise NotImplementedError

    def profile_line(self, key: str, value: str) -> str:
        raise NotImplementedError

    def profile(self, profile, phrases: dict) -> str:
        """The profile block; '' when no field has a value."""
        lines = [self.profile_line(key, _fmt_value(value)) for key, value in _flatten(profile)
                 if value is not None and value != ""]
        return "\n".join([self.heading("profile", phrases), *lines]) if lines else ""

    def task(self, task: str, phrases: dict) -> str:
        return self.heading("task", phrases) + "\n" + task

    def history(self, items: list, phrases: dict) -> str:
        """The block of earlier items (block layout only), oldest first."""
        lines = [f"{n}. {it.prefix}{it.continuation}" for n, it in enumerate(items, 1)]
        return "\n".join([self.heading("history", phrases), *lines])

    def system(self, blocks: list[str]) -> str:
        return "\n\n".join(blocks)

    def context(self, turns: list[tuple[str, object]], phrases: dict) -> list[str]:
        """Lines of the turns before the item, as (speaker, content) pairs."""
        return [self.heading("context", phrases), *(f"{who}: {content}" for who, content in turns)]

    def item(self, item, phrases: dict) -> list[str]:
        """Lines of the item itself: what it is about, then the instruction."""
        about = item.prefix.strip()
        return ([about] if about else []) + [self.instruction(item, phrases)]

    def instruction(self, item, phrases: dict) -> str:
        return phrases["instruction"].get(item.collection, phrases["instruction"][""])

    def user_turn(self, item, turns: list[tuple[str, object]], phrases: dict, crowd: list[str] = ()) -> str:
        """An item's user turn; `turns` is empty when the context is not shown; `crowd`: the item's crowd lines
        (`crowd_line`), written after what the item is about, before the instruction."""
        lines = self.context(turns, phrases) if turns else []
        item_lines = self.item(item, phrases)
        return "\n".join(lines + item_lines[:-1] + list(crowd) + item_lines[-1:])

    def crowd_line(self, which: str, mean: str | None, count: str, phrases: dict) -> str:
        """One line of crowd statistics: `which` is crowd (other users) or own (the user's earlier items);
        `mean` the mean to one decimal (None: no ratings), `count` the count's bucket."""
        if mean is None:
            return phrases[which + "_none"]
        return phrases[which].format(mean=mean, count=count)

    def conversation_turn(self, lines: list[tuple[str, object]], opening: bool, omitted: str, about: str, item,
                          phrases: dict) -> str:
        """The user turn before one of the twin's lines in a conversation: the other speakers' lines since the
        twin's previous line, as (speaker, content), then `about` (the item's prefix, when it has one). The
        first turn of a conversation opens with the context heading (then `omitted` when its earlier turns
        are left out) and ends with the instruction: once per conversation, as the turns that follow are
        plainly the same exchange."""
        head = [self.heading("context", phrases)] + ([omitted] if omitted else []) if opening else []
        tail = ([about] if about else []) + ([self.instruction(item, phrases)] if opening else [])
        return "\n".join(head + [f"{who}: {c}" for who, c in lines] + tail)


@register_style
class SimpleStyle(PromptStyle):
    """Bracketed tags, one profile field a line: [USER_PROFILE] / [USER_AGE=30]."""

    name = "simple"
    TAGS = {"profile": "[USER_PROFILE]", "task": "[TASK]", "history": "[HISTORY]", "context": "[CONTEXT]"}

    def heading(self, part: str, phrases: dict) -> str:
        return self.TAGS[part]

    def profile_line(self, key: str, value: str) -> str:
        tag = re.sub(r"\W+", "_", key).strip("_").upper()
        return f"[USER_{tag}={value}]"


@register_style
class DetailedStyle(PromptStyle):
    """Headings in the data's language, `key: value` profile lines, and the item's time."""

    name = "detailed"

    def heading(self, part: str, phrases: dict) -> str:
        return f"=== {phrases[part]} ==="

    def profile_line(self, key: str, value: str) -> str:
        return f"{key.replace('_', ' ')}: {value}"

    def item(self, item, phrases: dict) -> list[str]:
        when = [f"{phrases['time']}: {item.time_text}"] if item.time_text else []
        return [self.heading("item", phrases), *when, *super().item(item, phrases)]


@register_style
class LovinkStyle(PromptStyle):
    """The research scripts' Lovink prompt: `### ` headings, the profile as JSON inside <user_profile>, earlier
    items as <sample> lines inside <speaking_style_examples> (the block layout), context turns as `speaker: line`."""

    name = "lovink"

    def heading(self, part: str, phrases: dict) -> str:
        return f"### {phrases[part]}"

    def profile_line(self, key: str, value: str) -> str:
        return f"{key}: {value}"

    def profile(self, profile, phrases: dict) -> str:
        kept = {k: v for k, v in profile.items() if v not in (None, "", [], {})} if isinstance(profile, dict) else {}
        if not kept:
            return ""
        body = json.dumps(kept, ensure_ascii=False, indent=2)
        return f"{self.heading('profile', phrases)}\n<user_profile>\n{body}\n</user_profile>"

    def history(self, items: list, phrases: dict) -> str:
        samples = [f"  <sample>{it.prefix}{it.continuation}</sample>" for it in items]
        return "\n".join([self.heading("history", phrases), "<speaking_style_examples>", *samples,
                          "</speaking_style_examples>"])


# ---------------------------------------------------------------- sequences


# the line that stands for a conversation's turns left out (max_context_turns, or cut to fit max_length)
