"""`usertwin serve`: a trained twin behind an OpenAI-compatible HTTP API, with a page to try it (app.py), and
the batching of concurrent requests into one model call (batching.py). Needs the `serve` extra."""
