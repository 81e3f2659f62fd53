"""Rendering: ablations, styles, languages, chat templates, target spans, the prefix property."""

from __future__ import annotations

import pytest
from conftest import make_tokenizer
from helpers import FIXTURES, ROOT, dialogue_timeline, rating_timeline

from usertwin.config import ABLATIONS, RenderSettings
from usertwin.data import records
from usertwin.data.convert import convert_to_file
from usertwin.data.records import ROLES, Item
from usertwin.data.timeline import Sample, Timeline, Window, build_timelines
from usertwin.errors import UsertwinError
from usertwin.text.render import Renderer
from usertwin.text.styles import (
    LANGUAGES,
    PHRASES,
    ROLE_PHRASES,
    STYLES,
    SimpleStyle,
    register_style,
    style_names,
)


def _render(tl, cfg, tok, items, targets):
    return Renderer(cfg, tok).render(tl, items, targets)


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_each_ablation_shows_exactly_its_parts(ablation, tokenizer):
    tl = dialogue_timeline(6)
    r = Renderer(RenderSettings(ablation=ablation), tokenizer)
    p, h, c = ABLATIONS[ablation]
    hist = [0, 1, 2] if r.use_history else []
    text = r.render(tl, hist + [3], [3]).text
    assert ("[USER_PROFILE]" in text) == p
    assert ("[USER_NAME=BIANCA]" in text) == p
    assert ("[CONTEXT]" in text) == c
    assert ("question 3?" in text) == c
    assert "[TASK]\nSpeak as this character." in text
    assert r.use_history == h
    assert ("answer 1" in text) == h  # a history item's continuation


def test_flags_override_the_ablation(tokenizer):
    r = Renderer(RenderSettings(ablation="profile_and_history_and_context", use_profile=False), tokenizer)
    assert (r.use_profile, r.use_history, r.use_context) == (False, True, True)
    with pytest.raises(UsertwinError, match="unknown ablation 'profile_history'"):
        Renderer(RenderSettings(ablation="profile_history"), tokenizer)


def test_target_spans_are_exact_and_close_with_end_of_turn(tokenizer):
    tl = rating_timeline(6)
    rendered = _render(tl, RenderSettings(), tokenizer, [0, 1, 2, 3], [2, 3])
    spans = rendered.target_spans()
    assert [p for _, _, p in spans] == [2, 3]
    for start, end, pos in spans:
        assert rendered.text[start:end] == tl.items[pos].continuation + "<|im_end|>"
    # the history item's continuation is in the text but carries no loss
    assert "1.5<|im_end|>" in rendered.text[:spans[0][0]]


def test_sample_is_a_prefix_of_the_window(tokenizer):
    """The invariant behind timeline training: target k rendered as its own sample with items 0..k-1 as
    history is exactly the start of the window that holds items 0..k, and its span is the same."""
    tl = dialogue_timeline(8)
    r = Renderer(RenderSettings(), tokenizer)
    window = r.render_window(tl, Window("c1", list(range(8)), [3, 4, 5, 6, 7]))
    wspans = {p: (s, e) for s, e, p in window.target_spans()}
    for k in range(3, 8):
        sample = r.render_sample(tl, Sample("c1", k, list(range(k))))
        assert window.text.startswith(sample.text)
        (s, e, p), = sample.target_spans()
        assert (s, e) == wspans[k] and p == k
    # and the chat template itself agrees with our pieces (an own earlier turn is an assistant turn)
    full = tokenizer.apply_chat_template(r.messages(tl, [0, 1, 2]), tokenize=False)
    assert full.rstrip("\n") == r.render(tl, [0, 1, 2], [2]).text
    rating = rating_timeline(3)
    msgs = [{"role": "system", "content": r.system_text(rating)}]
    for pos in range(3):
        msgs += [{"role": "user", "content": r.user_text(rating, pos)},
                 {"role": "assistant", "content": rating.items[pos].continuation}]
    assert msgs == r.messages(rating, [0, 1, 2])


def test_dialogue_own_turns_and_interlocutors(tokenizer):
    """The twin's own turns are assistant turns, the other speakers' lines user turns, named."""
    tl = dialogue_timeline(4)
    text = Renderer(RenderSettings(), tokenizer).render(tl, [1], [1]).text
    ask = "Write the next line this user says:"
    assert text.endswith(f"user\n[CONTEXT]\n{ask}<|im_end|>\n<|im_start|>assistant\nearlier 1<|im_end|>\n"
                         "<|im_start|>user\nCAMERON: question 1?<|im_end|>\n<|im_start|>assistant\n"
                         "answer 1<|im_end|>")  # the instruction: once, where the conversation opens
    role_tl = Timeline("x", {"name": "HP"}, "t", "en", [Item(
        continuation="hi", collection="dialogue",
        context=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "mine"}])])
    r = Renderer(RenderSettings(), None)
    assert [m["content"] for m in r.messages(role_tl, [0])[1:]] == [
        f"[CONTEXT]\nOther: hello\n{ask}", "mine", "", "hi"]


def test_language_follows_the_data_and_can_be_overridden():
    items = [Item(continuation="这部电影很好看，推荐", prefix="《花椒之味》：", collection="movie_review")]
    tl = Timeline("z", {"name": "豆友"}, "模拟用户写短评", None, items)
    text = Renderer(RenderSettings(), None).render(tl, [0], [0]).text
    assert "写出该用户对这部电影的短评：" in text
    text = Renderer(RenderSettings(language="en"), None).render(tl, [0], [0]).text
    assert "Write the review this user writes for this movie:" in text
    ja = Timeline("j", {}, "t", None, [Item(continuation="すごく寒いです！", collection="dialogue")])
    assert "このユーザーの次の発話" in Renderer(RenderSettings(), None).render(ja, [0], [0]).text
    ja.items[0].context = [{"source": "相手", "content": "寒いですね"}] * 20  # more than max_context_turns
    assert "（これより前の会話は省略）" in Renderer(RenderSettings(), None).render(ja, [0], [0]).text


def test_detailed_style_and_block_layout():
    tl = rating_timeline(4)
    text = Renderer(RenderSettings(prompt_style="detailed"), None).render(tl, [0, 1], [1]).text
    assert "=== User profile ===\nname: u1\nage: 30" in text
    assert "=== Now ===\nTime: 1001000" in text
    block = Renderer(RenderSettings(history_layout="block"), None).render(tl, [0, 1, 2], [2])
    assert "[HISTORY]\n1. Movie 0 (1990) (Drama): 1.0\n2. Movie 1 (1991) (Drama): 1.5" in block.text
    assert len(block.target_spans()) == 1


def test_plain_format_without_chat_template(plain_tokenizer):
    tl = rating_timeline(3)
    rendered = _render(tl, RenderSettings(), plain_tokenizer, [0, 1], [1])
    assert "<|im_start|>" not in rendered.text
    (s, e, _), = rendered.target_spans()
    assert rendered.text[s:e] == "1.5<|im_end|>"  # the eos token closes the target


def test_template_without_system_role():
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
              "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    tok = make_tokenizer(strict)
    tl = rating_timeline(4)
    r = Renderer(RenderSettings(), tok)
    window = r.render(tl, [0, 1, 2], [1, 2])
    sample = r.render(tl, [0, 1], [1])
    assert window.text.startswith(sample.text)
    assert window.text.startswith("<|im_start|>user\n[USER_PROFILE]")


def test_a_new_style_is_one_registered_class(tokenizer, monkeypatch):
    """A style registered by name is usable as prompt_style and changes only the part it overrides."""
    monkeypatch.setattr("usertwin.text.styles.STYLES", dict(STYLES))  # the registration ends with the test

    @register_style
    class MissionStyle(SimpleStyle):
        name = "mission"

        def task(self, task, phrases):
            return "[MISSION]\n" + task.upper()

    assert style_names() == ("simple", "detailed", "lovink", "mission")
    tl = dialogue_timeline(5)
    simple = Renderer(RenderSettings(), tokenizer).render(tl, [0, 1, 2], [1, 2])
    mission = Renderer(RenderSettings(prompt_style="mission"), tokenizer).render(tl, [0, 1, 2], [1, 2])
    assert "[TASK]\nSpeak as this character." in simple.text
    assert mission.text == simple.text.replace("[TASK]\nSpeak as this character.", "[MISSION]\nSPEAK AS THIS CHARACTER.")
    assert [s.text for s in mission.segments[1:]] == [s.text for s in simple.segments[1:]]  # only the header
    with pytest.raises(UsertwinError, match="unknown prompt_style 'loud'; choose one of simple, detailed, lovink, mission"):
        Renderer(RenderSettings(prompt_style="loud"), tokenizer)
    # the settings ask the registry: the new style is a valid YAML value and flag choice with no other edit
    from usertwin.cli import build_parser
    from usertwin.config import from_mapping, resolve

    assert from_mapping({"prompt_style": "mission"}, "test.yaml").prompt_style == "mission"
    assert resolve(build_parser().parse_args(["prepare", "--prompt_style", "mission"])).prompt_style == "mission"


def test_registered_styles_are_the_prompt_style_choices():
    from dataclasses import fields

    from usertwin.config import Config, choices_of

    assert style_names() == ("simple", "detailed", "lovink")
    assert choices_of(next(f for f in fields(Config) if f.name == "prompt_style")) == style_names()


# ---------------------------------------------------------------- the twin's role


def _converted(dataset, raw, tmp_path) -> list[Timeline]:
    out = tmp_path / f"{dataset}.jsonl"
    convert_to_file(dataset, raw, out, progress=False)
    return build_timelines(records.load(out).records)[0]


def test_a_movie_character_is_a_character_and_its_ids_stay_out_of_the_prompt(tmp_path, tokenizer):
    bianca = _converted("cornell", FIXTURES / "convert" / "cornell", tmp_path)[0]
    assert bianca.role == "character"
    text = Renderer(RenderSettings(), tokenizer).render(bianca, [0, 1], [1]).text
    assert text.startswith("<|im_start|>system\n[USER_PROFILE]\n[USER_NAME=BIANCA]\n[USER_GENDER=f]\n"
                           "[USER_MOVIE_TITLE=10 things i hate about you]\n[USER_MOVIE_YEAR=1999]\n"
                           "[USER_MOVIE_GENRES=comedy, romance]\n\n[TASK]\n")
    assert text.count("Write the next line this character says:") == 1  # items 0 and 1 are one conversation: its opening instruction is rendered once
    assert "this user" not in text and "MOVIE_ID" not in text and "CREDIT" not in text
    detailed = Renderer(RenderSettings(prompt_style="detailed"), None).render(bianca, [0], [0]).text
    assert detailed.startswith("=== Character profile ===\nname: BIANCA\n")
    zh = Renderer(RenderSettings(language="zh"), None).render(bianca, [0], [0]).text
    assert "写出该角色接下来说的台词：" in zh
    ja = Renderer(RenderSettings(language="ja", prompt_style="detailed"), None).render(bianca, [0], [0]).text
    assert "=== キャラクタープロフィール ===" in ja and "このキャラクターの次のセリフを書いてください：" in ja


def test_every_role_has_its_phrases_in_every_language():
    assert ("user", *ROLE_PHRASES) == ROLES  # "user" is PHRASES itself
    for role, by_language in ROLE_PHRASES.items():
        assert set(by_language) == set(LANGUAGES), role
        for lang in LANGUAGES:
            named = by_language[lang]
            assert set(named["instruction"]) == set(PHRASES[lang]["instruction"]), (role, lang)
            assert set(named) <= set(PHRASES[lang]), (role, lang)
            assert all(named["instruction"].values()) and named["profile"], (role, lang)


def test_a_user_renders_as_before_the_roles(tmp_path):
    """The role changes a character's prompt only: MovieLens renders byte for byte as it always did."""
    user_1 = _converted("movielens", ROOT / "examples" / "movielens-mini", tmp_path)[0]
    assert user_1.role == "user"
    task = ("Predict the rating (0.5-5.0 stars, in half stars) this MovieLens user gives to each movie, from "
            "their rating history.")
    assert Renderer(RenderSettings(), None).render(user_1, [0, 1], [1]).text == (
        f"[TASK]\n{task}\n\n"  # ml-latest-small has no profile (and no name is made up from the id)
        "She's the One (1996) (Comedy, Romance):\nPredict the rating this user gives to this movie:\n4.0\n\n"
        "Star Wars: Episode VI - Return of the Jedi (1983) (Action, Adventure, Sci-Fi):\n"
        "Predict the rating this user gives to this movie:\n5.0")
    assert Renderer(RenderSettings(prompt_style="detailed"), None).render(user_1, [0], [0]).text == (
        f"=== Task ===\n{task}\n\n=== Now ===\n"
        "Time: 2000-07-30T18:08:19Z\nShe's the One (1996) (Comedy, Romance):\n"
        "Predict the rating this user gives to this movie:\n4.0")
