"""Conversations (Twin.chat, `usertwin serve`): OpenAI-style messages read as a dialogue item's context,
and the prompt before the twin's reply."""

from __future__ import annotations

import dataclasses
import json

from usertwin.errors import UsertwinError

CHAT_KIND = "dialogue"  # a reply is a dialogue item, whatever the user's last item was


def chat_prompt(twin, messages: list, user=None, profile: dict | None = None, history: list | None = None,
                room: int = 0) -> list[int]:
    """The token ids before the twin's reply to `messages` (see Twin.chat)."""
    context, described = chat_context(messages)
    if described is not None:
        if user is not None or profile is not None:
            raise UsertwinError("a system message describes the user: send it, or name the user (user=) or "
                                "pass profile=, not both")
        profile = described
    tl, pos = twin.situation(user, "", context, None, profile, history)
    tl.items[pos] = dataclasses.replace(tl.items[pos], collection=CHAT_KIND)
    return twin.prompt_at(tl, pos, room)


def check_chat(twin, instead: str) -> None:
    """A twin trained without a conversation answers one with its chat template's words, not the user's:
    refused, naming what it was trained on and what to ask (`instead`). A twin whose facts do not list its
    collections (trained before twins kept them) is let through."""
    kinds = trained_on(twin)
    if kinds is None or CHAT_KIND in kinds:
        return
    what = f"ratings ({', '.join(kinds)})" if twin.scale else ", ".join(kinds)
    raise UsertwinError(f"this twin was trained on {what}, never on a {CHAT_KIND}: it cannot chat as the user; "
                        f"{instead}")


def trained_on(twin) -> list[str] | None:
    """The collections the twin's training data held (twin.json), or None when it does not say."""
    try:
        return twin.facts.get("collections")
    except UsertwinError:  # a base model without records knows no data: nothing to refuse by
        return None


def chat_context(messages: list) -> tuple[list[dict], dict | None]:
    """(context turns in the records format, the profile a system message gives or None)."""
    if not isinstance(messages, list) or not messages:
        raise UsertwinError("messages must be a non-empty list of {role, content} objects")
    check_text(messages, "messages")
    turns, profile = [], None
    for i, m in enumerate(messages):
        role, content = _message_parts(m, i)
        if role == "system":
            if profile is not None or turns:
                raise UsertwinError(f"messages[{i}]: one system message, before the conversation")
            profile = _system_profile(content)
        elif role == "assistant":
            turns.append({"role": "assistant", "content": content})
        else:  # the other speaker, under its name when the data named speakers
            name = m.get("name")
            turns.append({"source": str(name), "content": content} if name else {"role": "user", "content": content})
    return turns, profile


def _message_parts(m, i: int) -> tuple[str, str]:
    if not isinstance(m, dict):
        raise UsertwinError(f"messages[{i}] must be an object with role and content")
    role, content = m.get("role"), m.get("content")
    if role not in ("system", "user", "assistant"):
        raise UsertwinError(f"messages[{i}].role must be system, user or assistant, not {role!r}")
    if isinstance(content, list):  # OpenAI's content parts: only text parts mean anything to a twin
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise UsertwinError(f"messages[{i}].content: only text parts are supported")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise UsertwinError(f"messages[{i}].content must be text")
    return role, content


def _system_profile(text: str) -> dict:
    """A JSON object is the profile itself; any other text describes the user in words."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    return {"description": text.strip()} if text.strip() else {}


def check_text(value, where: str):
    """`value` (a string, or strings inside lists and dicts) as a tokenizer can take it: a lone UTF-16 surrogate
    (valid JSON, "\\ud800") is no text; refused naming where it is, instead of the tokenizer's TypeError."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UsertwinError(f"{where}: not valid text (a lone UTF-16 surrogate {value[e.start]!r} at character "
                                f"{e.start})") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, where)
            check_text(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_text(v, f"{where}[{i}]")
    return value
