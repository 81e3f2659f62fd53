"""Token sequences of the twin's training and prompts: fitting to max_length, the prepared (cached) samples and
windows of every split, batching, and the preview that `inspect` shows."""
