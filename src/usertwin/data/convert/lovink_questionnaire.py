"""LovinkQuestionnaire files (the research scripts' questionnaire data) -> one record per user, type questionnaire.

`raw` is one JSON file, or a folder: every *.json in it, in name order. A file holds one user's record or a
list of them, in the shape the research scripts read:

    [{"user": {"profile": {"name": "user_78901533", ...}},
      "task": {"description": "模拟用户回答风格",
               "task_behavior_collections": [{"type": "dialogue", "data": [
                   {"context": [{"source": "questionnaire", "content": "我通常会礼貌的等待别人把话说完"}],
                    "continuation": "有点同意"}, ...]}]}}]

* Every collection becomes type `questionnaire` (the research scripts call it "dialogue", but a question and
  its answer are no conversation: rendered as one, the question would be a speaker's line). The question stays
  the item's context turn (source "questionnaire"); the answer is the continuation. Likert answers and
  answers to lettered options become choice items downstream (`usertwin.data.choices`); other answers are text.
* The data has no timestamps: items keep file order, which is then the time order (the time split takes each
  user's last answers as test targets). metadata {"order": n} is the answer's index in the user's file order.
* The user id is user.profile.name (else user.id / user_hash); the profile is kept whole. A record's
  task.likert / task.choices, when given, are kept. Language "zh" when the answers and questions are mostly
  Han characters, else "en".
* Bad rows: a record without an id, an answer that is not a non-empty string -> stop with file, record and
  field, or (--on_error skip) skip and count them ("no user id", "empty answer").
"""

from __future__ import annotations

from pathlib import Path

from usertwin.data.convert._common import Skips, json_files, read_json, user_sort_key
from usertwin.data.convert.seed_samples import language

TYPE = "questionnaire"
NOTE = ("the questionnaire has no timestamps: each user's answers keep file order, which is their time order "
        "(the time split's test targets are each user's last answers)")


def _user_id(rec: dict):
    user = rec.get("user") if isinstance(rec.get("user"), dict) else {}
    profile = user.get("profile") if isinstance(user.get("profile"), dict) else {}
    for value in (profile.get("name"), user.get("id"), rec.get("user_hash")):
        if isinstance(value, (str, int)) and str(value).strip():
            return str(value).strip()
    return None


def _items(rec: dict, where: str, skips: Skips) -> list:
    task = rec.get("task") if isinstance(rec.get("task"), dict) else {}
    out = []
    for ci, coll in enumerate(task.get("task_behavior_collections") or []):
        data = coll.get("data") if isinstance(coll, dict) else None
        for di, qa in enumerate(data if isinstance(data, list) else []):
            field = f"task.task_behavior_collections[{ci}].data[{di}]"
            answer = qa.get("continuation") if isinstance(qa, dict) else None
            if not isinstance(answer, str) or not answer.strip():
                skips.bad("empty answer", f"{where}, field {field}.continuation", f"got {answer!r}")
                continue
            item = {"context": [{"source": str(t.get("source") or "questionnaire"), "content": str(t["content"])}
                                for t in qa.get("context") or [] if isinstance(t, dict) and "content" in t],
                    "continuation": answer.strip(), "metadata": {"order": len(out)}}
            if isinstance(qa.get("choices"), list):
                item["choices"] = qa["choices"]
            out.append(item)
    return out


def _record(rec: dict, uid: str, items: list) -> dict:
    task = rec.get("task") if isinstance(rec.get("task"), dict) else {}
    user = rec.get("user") if isinstance(rec.get("user"), dict) else {}
    texts = [it["continuation"] for it in items] + [t["content"] for it in items for t in it["context"]]
    out_task = {"description": str(task.get("description") or ""), "language": language(texts)}
    for key in ("likert", "choices"):
        if key in task:
            out_task[key] = task[key]
    out_task["task_behavior_collections"] = [{"type": TYPE, "data": items}]
    return {"user_hash": uid, "user": {"id": uid, "profile": dict(user.get("profile") or {})}, "task": out_task}


def convert(raw_path, on_error="stop", *, progress: bool = False):
    skips = Skips.of(on_error)
    by_user: dict[str, dict] = {}
    for path in json_files(Path(raw_path), "questionnaire"):
        data = read_json(path)
        for index, rec in enumerate(data if isinstance(data, list) else [data]):
            where = f"{path}: record {index}"
            uid = _user_id(rec) if isinstance(rec, dict) else None
            if uid is None:
                skips.bad("no user id", where, "needs user.profile.name, user.id or user_hash")
                continue
            items = _items(rec, f"{where} (user {uid!r})", skips)
            if not items:
                skips.count("user without answers", where)
                continue
            if uid in by_user:  # one user's answers split over files: one record, file order kept
                by_user[uid]["task"]["task_behavior_collections"][0]["data"].extend(
                    {**it, "metadata": {"order": n}} for n, it in
                    enumerate(items, len(by_user[uid]["task"]["task_behavior_collections"][0]["data"])))
                continue
            by_user[uid] = _record(rec, uid, items)
    return (by_user[u] for u in sorted(by_user, key=user_sort_key))
