"""Third-party messages that tell a usertwin user nothing, silenced around the one call that emits them.

Each filter is a context manager around a single call, never a process-wide setting, so the same message from
anywhere else still shows; `show=True` (the CLI's --debug) lets everything through.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

# peft's PeftModel.__init__ reads model.is_gradient_checkpointing, which transformers 5 deprecates in favour of
# is_activation_checkpointing: peft's call, not ours, and nothing the user can change
GRADIENT_CHECKPOINTING_DEPRECATED = r"`is_gradient_checkpointing` is deprecated"
# accelerate's save_state drops the second name of tied weights (lm_head.weight = embed_tokens.weight) from
# the safetensors file; its load_state (safetensors.torch.load_model) restores the tie, so nothing is lost
SHARED_TENSOR_REMOVED = "Removed shared tensor"
ACCELERATE_SAVE_LOGGER = "accelerate.utils.other"


@contextlib.contextmanager
def warning_hidden(category: type[Warning], message: str, show: bool = False):
    """Python warnings of `category` whose text starts with the regex `message`, hidden inside the block."""
    if show:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


class _Containing(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)  # accelerate puts "[RANK n] " in front


@contextlib.contextmanager
def log_hidden(logger_name: str, text: str, show: bool = False):
    """Records of one library logger whose message contains `text`, dropped inside the block."""
    if show:
        yield
        return
    logger, drop = logging.getLogger(logger_name), _Containing(text)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def loading_bars(show: bool):
    """transformers' "Loading weights" and GGUF "de-quantizing" bars, off inside the block unless `show` and
    stderr is a terminal (in a log file a bar is a wall of carriage returns)."""
    if show and sys.stderr.isatty():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with _gguf_bar_off():
            yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _gguf_bar_off():
    # the GGUF reader imports tqdm.auto directly, so transformers' own switch does not reach it
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def silent(*args, **kwargs):
        return original(*args, **{**kwargs, "disable": True})

    gguf_utils.tqdm = silent
    try:
        yield
    finally:
        gguf_utils.tqdm = original
