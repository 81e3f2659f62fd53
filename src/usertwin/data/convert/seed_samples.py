"""Sample files extracted by the original research scripts (the ones usertwin re-implements) -> one record
per user_hash (type dialogue), for users migrating from those scripts.

`raw` is one sample file, or a folder: every *.json in it, in name order. A file is a JSON list of samples
{context: [{role, content}], next_question, user_profile, user_object, task_description, user_hash}.

* Roles: in those samples role "assistant" is the twin's own earlier turn and role "user" the other
  person. In records a context turn whose source is "user" (or the profile name) is the twin's own, so
  role "assistant" -> source "user" and role "user" -> source "interlocutor" (any other role is kept as
  its own source name).
* Items keep file order (the samples have no timestamps), with metadata {"order": n (the sample's index in
  its file), "source_file": file name}; continuation = next_question, continuation_prefix "".
* Profile = user_profile, whole (dimensions, life_experience, ...); a profile without a name gets none (the
  user_hash is an id the prompt should not show; it stays the record's user_hash). user_object repeats it
  (`profile` is a subset of user_profile and `personality.structured` equals `dimensions`; `unstructured` is
  null): when so it is dropped, otherwise it is kept as profile["user_object"]. Task description =
  task_description. Language: "ja" when the user's texts hold kana, else "zh" when they are mostly Han
  characters, else "en".
* Records are ordered by user_hash (numerically when numeric).
* Duplicates: a sample seen before (same user_hash, context and next_question) is kept once, counted
  ("duplicate sample"), and the file(s) it appeared in again are listed in the kept item's
  metadata["also_in"]. Real data: all_samples.json has 159 samples of 5 users and no duplicate inside it;
  val_samples.json holds 20 samples (4 per user), every one of them also in all_samples.json, so the
  folder converts to the same 159 items with 20 counted duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path

from usertwin.data.convert._common import Skips, json_files, read_json, record, user_sort_key
from usertwin.errors import UsertwinError

OTHER = "interlocutor"
OWN = "user"


def language(texts) -> str:
    han = total = 0
    for text in texts:
        for ch in text:
            if "\u3040" <= ch <= "\u30ff":
                return "ja"
            if not ch.isspace():
                total += 1
                han += "\u4e00" <= ch <= "\u9fff"
    return "zh" if han > 0.2 * max(1, total) else "en"


def _source(role) -> str:
    role = str(role or "").strip()
    if role == "assistant":
        return OWN
    if role in ("user", ""):
        return OTHER
    return role


def _load(path: Path) -> list:
    samples = read_json(path)
    if not isinstance(samples, list):
        raise UsertwinError(f"{path}: expected a list of samples [{{\"context\": ..., \"next_question\": ...}}], "
                            f"got a {type(samples).__name__}")
    return samples


def _covered(obj, profile: dict) -> bool:
    """Whether user_object says nothing that user_profile does not."""
    if not isinstance(obj, dict):
        return obj in (None, "", {})
    for key, value in obj.items():
        if key == "profile":
            if not isinstance(value, dict) or any(profile.get(k) != v for k, v in value.items()):
                return False
        elif key == "personality":
            if not isinstance(value, dict):
                return False
            for k, v in value.items():
                if k == "structured" and v == profile.get("dimensions"):
                    continue
                if v not in (None, "", {}, []):
                    return False
        elif value not in (None, "", {}, []):
            return False
    return True


def convert(raw_path, on_error="stop", *, progress: bool = False):
    raw, skips = Path(raw_path), Skips.of(on_error)
    files = json_files(raw, "sample")
    return _records(files, skips)


def _context(turns, where: str, skips: Skips):
    if turns is None:
        return []
    if not isinstance(turns, list):
        skips.bad("context is not a list of turns", where, "field context")
        return None
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("content"), str):
            skips.bad("a context turn needs a content string", where, f"field context[{i}]")
            return None
        out.append({"source": _source(t.get("role")), "content": t["content"]})
    return out


def _records(files: list[Path], skips: Skips):
    users: dict[str, dict] = {}
    kept: dict = {}  # (user, target, context) -> the kept item
    for path in files:
        for i, s in enumerate(_load(path)):
            where = f"{path}, sample {i}"
            if not isinstance(s, dict):
                skips.bad("sample is not an object", where)
                continue
            uid = s.get("user_hash")
            uid = str(uid).strip() if isinstance(uid, (str, int)) and not isinstance(uid, bool) else ""
            if not uid:
                skips.bad("sample without a user_hash string", where, f"field user_hash={s.get('user_hash')!r}")
                continue
            where += f" (user {uid!r})"
            target = s.get("next_question")
            if not isinstance(target, str) or not target.strip():
                skips.bad("next_question is missing or empty", where, "field next_question")
                continue
            context = _context(s.get("context"), where, skips)
            if context is None:
                continue
            key = (uid, target, json.dumps(context, ensure_ascii=False))
            if key in kept:
                skips.count("duplicate sample", where)
                also = kept[key]["metadata"].setdefault("also_in", [])
                if path.name not in also:
                    also.append(path.name)
                continue
            u = users.get(uid)
            if u is None:
                profile = s.get("user_profile")
                if profile is not None and not isinstance(profile, dict):
                    skips.bad("user_profile is not an object", where, "field user_profile")
                    continue
                profile = dict(profile or {})
                obj = s.get("user_object")
                if not _covered(obj, profile):
                    profile["user_object"] = obj
                u = users[uid] = {"profile": profile, "task": str(s.get("task_description") or ""), "items": []}
            item = {"continuation_prefix": "", "continuation": target, "context": context,
                    "metadata": {"order": i, "source_file": path.name}}
            kept[key] = item
            u["items"].append(item)
    for uid in sorted(users, key=user_sort_key):
        u = users[uid]
        lang = language(t for it in u["items"][:50] for t in [it["continuation"]] + [c["content"] for c in it["context"]])
        task = u["task"] or "Continue this user's dialogue: predict the next message they write."
        yield record(uid, u["profile"], task, lang, "dialogue", u["items"])
