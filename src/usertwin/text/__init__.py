"""Text: prompts rendered from timelines, token ids, batches, previews."""
