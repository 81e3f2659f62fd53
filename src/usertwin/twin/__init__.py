"""A trained twin in use: `Twin` (api.py) is the one interface -- Python, predict, scenario, simulate, serve
and export all load it by `Twin.load` -- over the `Engine` (engine.py: prompts, likelihoods, generation),
its sampling (sampling.py) and streaming (stream.py), a batch of a split's targets scored at once
(targets.py), and conversations (chat.py)."""

from usertwin.twin.api import PromptTooLong, Twin

__all__ = ["PromptTooLong", "Twin"]
