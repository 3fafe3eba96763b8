"""The interface `chattune serve` runs on: one HTTP layer (`serve.py`) over interchangeable engines.

An engine answers `Job`s for the models it serves. The HTTP layer validates a request, renders nothing
itself, builds a `Job` and `submit`s it; the engine delivers, through `Job.deliver` (thread-safe):

* streams: one `Started` (the prompt was accepted, its token count), then str text deltas, then one
  `Completion`;
* plain requests: one `Completion`;
* or, at any point instead, one `APIError` (the job is over).

Every engine renders prompts with the served model's `PromptRenderer` (the run's own tokenizer and
template, as training rendered them), so which engine answers never changes the prompt. Engines:
``hf`` (transformers in this process, continuous batching), ``vllm`` (a managed vLLM server fed the
rendered prompt ids), ``llamacpp`` (the run's GGUF export through llama.cpp).

Invariants every engine keeps:
* `submit` never blocks on the model: it queues or raises `QueueFull` (the HTTP layer answers 429) or
  `APIError` (e.g. 503 while stopping, 404 for an unknown model).
* A job whose `cancel` event is set stops producing at its next token and is answered no further
  (a client that left frees its slot at once).
* Greedy answers equal `Generator.generate` / `chattune chat` for the same model and messages.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ChattuneError
from .serve_schema import APIError

if TYPE_CHECKING:
    from .prompt import PromptRenderer


@dataclass(frozen=True)
class Sampling:
    """Generation parameters of one request."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    explicit_max: bool = field(default=True, compare=False)

    @property
    def batchable(self) -> bool:
        # A seeded sampler in a batch draws different numbers than alone: keep those requests solo.
        return self.temperature == 0 or self.seed is None


@dataclass(frozen=True)
class Started:
    """First item a streaming job receives: the prompt was accepted and generation begins."""

    prompt_tokens: int


@dataclass(eq=False)
class Job:
    """One request waiting for an engine (see the module doc for what it receives).

    Attributes:
        model: the served model's name (a key of `Engine.models`).
        messages: the conversation, the run's system prompt already added.
        sampling: generation parameters.
        stream: whether the client streams.
        loop, out: where `deliver` puts items (the handler's event loop and queue).
        cancel: set by the HTTP layer when the client leaves; the engine stops this job at once.
        tools: OpenAI function definitions to render with (None: none).
        submitted: monotonic time of submission (latency and time-to-first-token are measured from it).
    """

    model: str
    messages: list[dict]
    sampling: Sampling
    stream: bool
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancel: threading.Event = field(default_factory=threading.Event)
    tools: list[dict] | None = None
    submitted: float = field(default_factory=time.monotonic)

    def deliver(self, item: Any) -> None:
        """Hand an item to the waiting handler; callable from any thread."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class QueueFull(Exception):
    """`Engine.submit` found its queue full (the HTTP layer answers 429)."""


@dataclass
class LaneStats:
    """Counters one continuous batch (a "lane": one loaded model) adds to its engine's snapshot."""

    completed: int = 0
    cancelled: int = 0
    skipped: int = 0  # left before they started
    prefills: int = 0  # hf: groups of prompts prefilled together; llamacpp: prompts
    steps: int = 0
    largest_batch: int = 0

    @staticmethod
    def total(lanes: Iterable[LaneStats]) -> dict[str, int]:
        """The lanes' counters summed (largest_batch: the largest), as a snapshot shows them."""
        out = asdict(LaneStats())
        for stats in lanes:
            for k, v in asdict(stats).items():
                out[k] = max(out[k], v) if k == "largest_batch" else out[k] + v
        return out


@dataclass(frozen=True)
class EngineCaps:
    """What an engine can do (shown by /health; the HTTP layer refuses what is missing with a 400)."""

    continuous_batching: bool
    tools: bool
    reasoning: bool
    lora_switching: bool


@dataclass(frozen=True)
class ServedModel:
    """One model an engine serves, as the HTTP layer sees it.

    Attributes:
        name: the id clients put in the request's ``model`` field and `/v1/models` lists.
        renderer: how its conversations become prompt ids (the run's tokenizer and template).
        default_temperature, default_top_p: used when a request omits them (the model's generation_config
            when it samples, else OpenAI's 1.0).
        created: unix time the server loaded it.
    """

    name: str
    renderer: PromptRenderer
    default_temperature: float = 1.0
    default_top_p: float = 1.0
    created: int = field(default_factory=lambda: int(time.time()))


class Engine(Protocol):
    """What the HTTP layer needs from an engine (see the module doc for the delivery contract)."""

    kind: str  # "hf" | "vllm" | "llamacpp"
    caps: EngineCaps
    models: dict[str, ServedModel]  # by name, in the order given on the command line
    max_queue: int

    def start(self) -> None:
        """Begin answering (threads, subprocesses); called from the app's lifespan."""

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued jobs with 503, cancel running ones, release threads and subprocesses."""

    def submit(self, job: Job) -> None:
        """Queue `job`. Raises `QueueFull`, or `APIError` (503 stopping, 404 unknown model)."""

    def snapshot(self) -> dict:
        """Queue depth and counters (shown by /health and /metrics): at least ``queued`` and ``running``."""

    def main_loop(self) -> Callable[[], None] | None:
        """The engine's model loop for `run_server` to run in the main thread (it returns after `stop`)
        instead of the thread `start` would make; None when the engine's work runs elsewhere."""


def as_api_error(e: BaseException) -> APIError:
    """The error a client sees for an exception raised while answering it."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ChattuneError):
        return APIError(400, str(e), code="invalid_messages")
    from jinja2 import TemplateError

    if isinstance(e, TemplateError):  # the chat template refuses these messages (e.g. roles must alternate)
        return APIError(400, f"the model's chat template rejected these messages: {e}", param="messages",
                        code="invalid_messages")
    return APIError(500, f"generation failed: {type(e).__name__}: {e}")


def unknown_model(name: str, served: dict[str, ServedModel]) -> APIError:
    """The 404 for a request naming a model this server does not serve."""
    return APIError(404, f"The model '{name}' does not exist; this server serves {', '.join(map(repr, served))}",
                    param="model", code="model_not_found")


def fit_context(n_prompt: int, sampling: Sampling, limit: int | None) -> Sampling:
    """Check a prompt of `n_prompt` tokens fits a context of `limit` (None: unknown, no check); trim a
    defaulted max_tokens to fit (every engine's one rule).

    Raises:
        APIError: 400 context_length_exceeded (the prompt alone, or with an explicit max_tokens, is too long).
    """
    if limit is None:
        return sampling
    room = limit - n_prompt
    if room < 1:
        raise APIError(400, f"the prompt is {n_prompt} tokens; this model's context window is {limit} tokens",
                       param="messages", code="context_length_exceeded")
    if sampling.max_new_tokens > room:
        if sampling.explicit_max:
            raise APIError(400, f"the prompt ({n_prompt} tokens) plus max_tokens ({sampling.max_new_tokens}) "
                           f"exceeds this model's context window of {limit} tokens", param="max_tokens",
                           code="context_length_exceeded")
        return replace(sampling, max_new_tokens=room)
    return sampling
