"""Defaults that both the typed config and the CLI help show, in a module that is cheap to import:
`chattune --help` must not pay for pydantic (`chattune.config`)."""

SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_MAX_TOKENS_CAP = 1024
SERVE_MAX_QUEUE = 64
SERVE_PREFILL_TOKENS = 1024
SERVE_MAX_BATCH_SIZE = 64  # as many as may queue: with continuous batching a smaller cap makes the rest wait for whole answers
