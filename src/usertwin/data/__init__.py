"""Data: raw datasets -> records -> timelines -> splits -> samples or windows (cached)."""
