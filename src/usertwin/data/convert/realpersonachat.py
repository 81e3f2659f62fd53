"""RealPersonaChat (Japanese chit-chat between crowd workers, nu-dialogue/real-persona-chat) -> one record per
interlocutor (type dialogue, Japanese).

`raw` is the corpus folder `real_persona_chat/` (or the repository root holding it):
* interlocutors.json: {interlocutor_id: {interlocutor_id, persona: [10 sentences], personality: {BigFive_Openness:
  5.25, KiSS18_..., IOS, ATQ_..., SMS_...}, demographic_information: {gender, age, education, employment_status,
  region_of_residence}, text_chat_experience: {...}}} (a list of those objects, or JSON Lines of them as the
  Hugging Face "interlocutor" config exports, is read alike);
* dialogues/*.json, one dialogue a file: {dialogue_id, interlocutors: ["AA", "AB"], utterances: [{utterance_id,
  interlocutor_id, text, timestamp}], evaluations: [...]}. Utterances may also be columns (a dict of lists, as
  the Hugging Face "dialogue" config holds them). A dialogues.jsonl (one dialogue a line) replaces the folder.

Each utterance is an item of its speaker: continuation = text, context = the dialogue's earlier utterances as
role turns (the speaker's own: role "assistant", the other's: role "user"; the prompt then calls the other
speaker by the language's word for "the other person", never by an id), timestamp = the utterance's
timestamp as written (ISO 8601, no zone), metadata {"conversation_id": dialogue_id, "utterance_id",
"partner": the other's id}. Items are in time order (ties keep file order).

Profile, with Japanese labels so the prompt stays Japanese (values are the corpus' own, some in English such as
"Male"): ペルソナ (the persona sentences, one a line), 性別, 年齢, 学歴, 就業状況, 居住地, and 性格特性 (the
personality scores, scale and trait names in Japanese; a name this module does not know is kept as written).
The interlocutor id is the record's id, not shown; text_chat_experience goes to the record's metadata.

Unknown times ("NaT", 352 utterances of the real corpus): the utterance stays an item and takes the previous
utterance's time (the next one's when it opens the dialogue), counted as "utterance without a time (took its
neighbour's)", so it keeps its place in the dialogue and in the timeline.

Left out and counted: utterances with empty text ("empty utterance": not an item, not context) and
interlocutors with no utterance ("interlocutor without utterances"). Bad data (an utterance without a text
string or an interlocutor id, a speaker missing from interlocutors.json, a timestamp that is no time) stops with
the file, the utterance, the user and the field, or is skipped and counted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from usertwin.data.convert._common import Skips, progress_bar, read_json, record, require_file
from usertwin.data.records import parse_timestamp
from usertwin.errors import UsertwinError

DESCRIPTION = "雑談対話で、この話者が相手に次に送る発話を予測してください。"
MISSING = (None, "", "NaT")  # how the corpus writes an unknown time (352 utterances in 170 dialogues)
OWN, OTHER = "assistant", "user"  # role turns: the twin's own lines and the other speaker's

DEMOGRAPHICS = {"gender": "性別", "age": "年齢", "education": "学歴", "employment_status": "就業状況",
                "region_of_residence": "居住地"}
# the corpus' personality scales (BigFive_Openness, KiSS18_BasicSkill, IOS, ...) by their Japanese names
SCALES = {"BigFive": "ビッグファイブ", "KiSS18": "社会的スキル", "ATQ": "気質", "SMS": "セルフモニタリング",
          "IOS": "他者との心理的距離"}
TRAITS = {
    "Openness": "開放性", "Conscientiousness": "誠実性", "Extraversion": "外向性", "Agreeableness": "協調性",
    "Neuroticism": "神経症傾向", "BasicSkill": "基本的スキル", "AdvancedSkill": "高度なスキル",
    "EmotionalManagementSkill": "感情処理のスキル", "OffenceManagementSkill": "攻撃に代わるスキル",
    "StressManagementSkill": "ストレス処理のスキル", "PlanningSkill": "計画のスキル", "Fear": "恐れ",
    "Frustration": "欲求不満", "Sadness": "悲しみ", "Discomfort": "不快", "ActivationControl": "活性化制御",
    "AttentionalControl": "注意制御", "InhibitoryControl": "抑制制御", "Sociability": "社交性",
    "HighIntensityPleasure": "高強度の快楽", "PositiveAffect": "ポジティブ感情",
    "NeutralPerceptualSensitivity": "中立的知覚感受性", "AffectivePerceptualSensitivity": "情動的知覚感受性",
    "AssociativeSensitivity": "連想的感受性", "OtherDirectedness": "他者志向性", "Acting": "演技",
}


def convert(raw_path, on_error="stop", *, progress: bool = False):
    raw, skips = _corpus(Path(raw_path)), Skips.of(on_error)
    people = _interlocutors(raw)
    sources = _dialogue_sources(raw)
    return _records(people, sources, skips, progress)


def _corpus(raw: Path) -> Path:
    if (raw / "real_persona_chat").is_dir():
        raw = raw / "real_persona_chat"
    if not raw.is_dir():
        raise UsertwinError(f"{raw}: expected the RealPersonaChat folder real_persona_chat/ (interlocutors.json "
                            "and dialogues/)")
    return raw


def _interlocutors(raw: Path) -> dict:
    """interlocutor id -> its object, from interlocutors.json (a dict or a list) or interlocutors.jsonl."""
    path = raw / "interlocutors.json"
    if not path.exists() and (raw / "interlocutors.jsonl").exists():
        rows = list(_json_lines(raw / "interlocutors.jsonl"))
    else:
        data = read_json(require_file(path, "the interlocutors' profiles interlocutors.json"))
        rows = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise UsertwinError(f"{path}: expected an object of interlocutors by id, got {type(data).__name__}")
    people = {}
    for n, person in enumerate(rows):
        pid = person.get("interlocutor_id") if isinstance(person, dict) else None
        if not isinstance(pid, str) or not pid.strip():
            raise UsertwinError(f"{path}: interlocutor {n} has no interlocutor_id string (field interlocutor_id)")
        people[pid.strip()] = person
    return people


def _json_lines(path: Path):
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsertwinError(f"{path}:{n}: invalid JSON ({e.msg})") from None


def _dialogue_sources(raw: Path) -> list:
    """(where, dialogue) loaders: every dialogues/*.json in name order, or the lines of dialogues.jsonl."""
    folder = raw / "dialogues"
    if folder.is_dir():
        files = sorted(folder.glob("*.json"))
        if not files:
            raise UsertwinError(f"{folder}: no dialogue files (*.json) in this folder")
        return [(str(p), p) for p in files]
    lines = raw / "dialogues.jsonl"
    if lines.exists():
        return [(f"{lines}:{n}", d) for n, d in enumerate(_json_lines(lines), 1)]
    raise UsertwinError(f"{raw}: missing the dialogues (a dialogues/ folder of *.json files, or dialogues.jsonl)")


def _utterances(dialogue: dict) -> list | None:
    """The utterances as a list of objects, whether stored as objects or as columns; None if neither."""
    u = dialogue.get("utterances")
    if isinstance(u, list):
        return u
    if isinstance(u, dict) and all(isinstance(v, list) for v in u.values()):
        n = max((len(v) for v in u.values()), default=0)
        return [{k: (v[i] if i < len(v) else None) for k, v in u.items()} for i in range(n)]
    return None


def _records(people: dict, sources: list, skips: Skips, progress: bool):
    items = defaultdict(list)  # interlocutor id -> [(time, order, item)]
    order = 0
    for where, source in progress_bar(sources, progress, "dialogues", unit="dialogue"):
        dialogue = read_json(source) if isinstance(source, Path) else source
        utterances = _utterances(dialogue) if isinstance(dialogue, dict) else None
        if utterances is None:
            skips.bad("not a dialogue with an utterances list", where, "field utterances")
            continue
        did = dialogue.get("dialogue_id", Path(where).stem)
        speakers = [str(s) for s in dialogue.get("interlocutors") or []]
        turns, last = [], None
        for i, u in enumerate(utterances):
            line = _line(u, f"{where}, dialogue {did}, utterances[{i}]", people, skips)
            if line is None:
                continue
            pid, text, stamp, ts = line
            if ts is None:  # an unknown time: the previous utterance's (else the next's) keeps the item in place
                stamp, ts = _nearest_time(utterances, i, last)
                skips.count("utterance without a time (took its neighbour's)", f"{where}, dialogue {did}, "
                            f"utterances[{i}] (user {pid!r})")
            last = (stamp, ts)
            partner = next((s for s in speakers if s != pid), None)
            context = [{"role": OWN if who == pid else OTHER, "content": said} for who, said in turns]
            meta = {"conversation_id": did, "utterance_id": u.get("utterance_id", i), "partner": partner}
            items[pid].append((ts, order, {"continuation_prefix": "", "continuation": text, "context": context,
                                           "timestamp": stamp, "metadata": meta}))
            order += 1
            turns.append((pid, text))
    for pid in sorted(people):
        if pid not in items:
            skips.count("interlocutor without utterances", f"interlocutor {pid!r}")
    for pid in sorted(items):
        person = people[pid]
        extra = {"text_chat_experience": person["text_chat_experience"]} if person.get("text_chat_experience") else {}
        yield record(pid, profile(person), DESCRIPTION, "ja", "dialogue",
                     [it for _ts, _n, it in sorted(items[pid], key=lambda x: (x[0], x[1]))], extra)


def _nearest_time(utterances: list, i: int, last):
    """(timestamp, unix seconds) of the utterance before i, else of the first later one with a time."""
    if last is not None:
        return last
    for u in utterances[i + 1:]:
        stamp = u.get("timestamp") if isinstance(u, dict) else None
        if stamp not in MISSING:
            try:
                return stamp, parse_timestamp(stamp)
            except ValueError:
                continue
    return None, 0.0


def _line(u, where: str, people: dict, skips: Skips):
    """(speaker id, text, timestamp as written, unix seconds) of one utterance; None when left out."""
    if not isinstance(u, dict):
        skips.bad("utterance is not an object", where)
        return None
    pid = u.get("interlocutor_id")
    if not isinstance(pid, str) or not pid.strip():
        skips.bad("utterance without an interlocutor_id string", where, f"field interlocutor_id={pid!r}")
        return None
    pid = pid.strip()
    where += f" (user {pid!r})"
    if pid not in people:
        skips.bad("speaker not in interlocutors.json", where, f"field interlocutor_id={pid!r}")
        return None
    text = u.get("text")
    if not isinstance(text, str):
        skips.bad("text is not a string", where, f"field text={text!r}")
        return None
    if not text.strip():
        skips.count("empty utterance", where)
        return None
    stamp = u.get("timestamp")
    if stamp in MISSING:
        return pid, text.strip(), None, None
    try:
        ts = parse_timestamp(stamp)
    except ValueError as e:
        skips.bad("timestamp is not a time", where, f"field timestamp={stamp!r}: {e}")
        return None
    return pid, text.strip(), stamp, ts


def profile(person: dict) -> dict:
    """What the prompt shows of an interlocutor, under Japanese labels."""
    out = {}
    persona = person.get("persona")
    if isinstance(persona, list) and persona:
        out["ペルソナ"] = "\n".join(str(s).strip() for s in persona if str(s).strip())
    elif isinstance(persona, str) and persona.strip():
        out["ペルソナ"] = persona.strip()
    demo = person.get("demographic_information") or {}
    for key, label in DEMOGRAPHICS.items():
        if demo.get(key) not in (None, ""):
            out[label] = demo[key]
    traits = _traits(person.get("personality") or {})
    if traits:
        out["性格特性"] = traits
    return out


def _traits(scores: dict) -> dict:
    """{"BigFive_Openness": 5.25, "IOS": 4} -> {"ビッグファイブ": {"開放性": 5.25}, "他者との心理的距離": 4}."""
    out: dict = {}
    for key, value in scores.items():
        scale, _, trait = str(key).partition("_")
        if not trait:
            out[SCALES.get(scale, scale)] = value
        else:
            out.setdefault(SCALES.get(scale, scale), {})[TRAITS.get(trait, trait)] = value
    return out
