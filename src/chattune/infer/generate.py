"""Generation from a run dir (adapter or merged), a model folder, a .gguf file or a Hub id.

`Generator` is what `eval`, `predict`, `chat` and the OpenAI-compatible server all use:

* `generate`: batched (left padding + attention mask), greedy at temperature 0, stops on the chat
  template's end-of-turn token(s); a row that finished early is cut at its end-of-turn, so the padding
  `generate` appends after it never reaches the text.
* `stream`: one conversation, text deltas as tokens arrive, then one `Completion`; a `threading.Event`
  cancels it promptly.
* `stream_many`: several conversations in one left-padded batch, each row's deltas as they arrive.

All three decode the same way (full decode of the new ids, special tokens skipped, stop strings cut), so
the concatenated stream deltas equal `generate()`'s text for greedy decoding (`stopping.py`).

Thread-safety: no per-call state lives on the `Generator`; the server serialises calls anyway because
one model cannot run two `generate` calls at once efficiently.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError
from .answer import Completion, RowStream
from .prompt import PromptRenderer
from .reasoning import ReasoningStream
from .stopping import CancelRows, QueueStreamer, StopStrings

if TYPE_CHECKING:
    from ..rundir.load import LoadedModel, LoadInfo


def model_name(path) -> str:
    """The name a loaded path is shown and served under: its folder's name, else the path (alias, Hub id)."""
    return (Path(str(path)).name if Path(str(path)).exists() else "") or str(path)


class Generator:
    """A loaded model + tokenizer that renders conversations exactly as training did and generates.

    Attributes:
        model: the causal LM (eval mode; a PeftModel for adapter run dirs).
        tokenizer: its tokenizer, with the chat template used in training.
        eos_token_ids: end-of-turn token ids generation stops on.
        name: the model name shown to users (run dir / folder name or Hub id).
        thinking: "off" or "keep" (Qwen3-style thinking, as in training).
        info: how the model was loaded (`chattune.rundir.load.LoadInfo`) when it came from `from_path`.
        system: the system prompt the run trained with (its most common one; None: none or not a run), which
            chat and serve put first when a conversation brings none.
        date: the day training pinned for templates that write today's date (``data.date``), or None.
        generation_config: the transformers ``GenerationConfig`` answers sample with (the run's; by default
            the model's own, which a model shared by several runs holds for the first of them only).
    """

    def __init__(self, model, tokenizer, *, eos_token_ids: list[int] | None = None, name: str = "model",
                 thinking: str = "off", info: LoadInfo | None = None, system: str | None = None,
                 date: str | None = None, generation_config=None):
        from ..rundir.load import stop_token_ids

        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = (generation_config if generation_config is not None
                                  else getattr(model, "generation_config", None))
        self.eos_token_ids = list(dict.fromkeys(eos_token_ids or stop_token_ids(self.generation_config, tokenizer)))
        if not self.eos_token_ids:
            raise ModelError(f"{name}: no end-of-turn token found (tokenizer has no eos_token and the chat "
                             "template's end-of-turn is unknown); generation would never stop")
        self.name = name
        self.thinking = thinking
        self.info = info
        self.system = system
        self.date = date
        self.renderer = PromptRenderer(tokenizer, name, tuple(self.eos_token_ids), thinking=thinking,
                                       system=system, date=date)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]

    @classmethod
    def from_path(cls, path, *, device=None, dtype=None, thinking=None) -> Generator:
        """Load a run dir, merged/plain model folder, the alias 'smollm2-135m-instruct', a .gguf or a Hub id.

        Args:
            path: what to load (see `chattune.rundir.load.load_run`).
            device: torch device (default: cuda if available, else cpu — decided by the loader).
            dtype: torch dtype or its name (default: the loader's choice, fp32 on CPU).
            thinking: "off"/"keep"; default from the run dir (training's data.thinking), else "off".

        Returns:
            A ready `Generator`.
        """
        from ..rundir.load import load_run

        return cls.from_loaded(load_run(path, device=device, dtype=dtype), path, thinking=thinking)  # in eval mode

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, path, *, thinking=None) -> Generator:
        """A `Generator` over what `rundir.load` loaded from `path` (named after its folder).

        Args:
            loaded: from `load_run` (or `load_adapter_into`: several runs sharing one model).
            path: what was loaded (its folder name becomes the generator's name).
            thinking: as in `from_path`.
        """
        return cls(loaded.model, loaded.tokenizer, eos_token_ids=list(loaded.info.eos_token_ids),
                   name=model_name(path), thinking=thinking or loaded.info.thinking, info=loaded.info,
                   system=loaded.info.system, date=loaded.info.date, generation_config=loaded.generation_config)

    def with_thinking(self, thinking: str) -> Generator:
        """A view of the same loaded model rendering with another thinking policy ("off"/"keep")."""
        import copy
        from dataclasses import replace

        view = copy.copy(self)
        view.thinking = thinking
        view.renderer = replace(self.renderer, thinking=thinking)
        return view

    def with_system(self, messages: list[dict]) -> list[dict]:
        """`messages` with the run's system prompt first when they bring none (`PromptRenderer.with_system`)."""
        return self.renderer.with_system(messages)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The token ids of `messages` (and `tools`) rendered for generation, exactly as training renders them."""
        return self.renderer.prompt_ids(messages, tools)

    # --- generation -------------------------------------------------------------------------------

    def generate_kwargs(self, max_new_tokens: int, temperature: float, top_p: float) -> dict:
        """What `generate` gets on top of the run's generation_config (`sampling.generate_kwargs`: the one
        policy, which the hf engine's rows apply too)."""
        from .sampling import generate_kwargs

        return generate_kwargs(self.generation_config, self.eos_token_ids, self.pad_token_id, max_new_tokens,
                               temperature, top_p)

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict:
        import torch

        from .batching import keep_last

        kw = self.generate_kwargs(max_new_tokens, temperature, top_p)
        if temperature > 0 and seed is not None:
            # The global RNG: transformers' sampling draws from it. Calls are serialised by callers.
            torch.manual_seed(int(seed))
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if base._supports_logits_to_keep():
            kw["logits_to_keep"] = keep_last()  # generate's own choice is the int 1 (see keep_last)
        return kw

    def completion(self, new_ids: list[int], prompt_len: int, max_new_tokens: int,
                stop: list[str] | None, cancelled: bool = False) -> Completion:
        """One row's generated ids as a Completion: `PromptRenderer.completion`, the rule every engine uses."""
        return self.renderer.completion(new_ids, prompt_len, max_new_tokens, stop, cancelled=cancelled)

    @property
    def reasoning_opened(self) -> bool:
        """Whether the generation prompt itself opens a think block (the model then writes only its close)."""
        return self.renderer.reasoning_opened

    def reasoning_stream(self) -> ReasoningStream:
        """A splitter for this generator's streamed text deltas (reasoning vs answer pieces)."""
        return self.renderer.reasoning_stream()

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                 tools: list[list[dict] | None] | None = None) -> list[Completion]:
        """Generate one answer per conversation, all in one left-padded batch.

        Args:
            conversations: each a list of {role, content} messages ending before the answer.
            max_new_tokens: generation limit per row.
            temperature: 0 = greedy; > 0 samples with `top_p`.
            top_p: nucleus sampling mass (sampling only).
            seed: seeds the sampler (sampling only) for reproducible output.
            stop: strings that end a row; the text is cut before the first one.
            tools: per conversation, the functions its prompt renders (None: no tools anywhere).

        Returns:
            One `Completion` per conversation, in order.
        """
        if not conversations:
            return []
        prompts = [self.prompt_ids(c, t) for c, t in zip(conversations, tools or [None] * len(conversations))]
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, seed)
        stop = [s for s in (stop or []) if s]
        rows = self._new_ids(prompts, kw, stop)
        return [self.completion(r, len(p), max_new_tokens, stop) for r, p in zip(rows, prompts)]

    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: int = 256) -> list[list[int]]:
        """Greedy continuations of already-rendered prompts, as token ids, each cut after its first
        end-of-turn token (what merge verification compares token for token).

        Args:
            prompts: token-id lists (e.g. from `prompt_ids`).
            max_new_tokens: generation limit per row.

        Returns:
            One list of new token ids per prompt, in order.
        """
        if not prompts:
            return []
        eos = set(self.eos_token_ids)
        out = []
        for row in self._new_ids(prompts, self._gen_kwargs(max_new_tokens, 0.0, 1.0, None), []):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            out.append(row if end is None else row[:end + 1])
        return out

    def _new_ids(self, prompts: list[list[int]], kw: dict, stop: list[str]) -> list[list[int]]:
        """The generated ids of each row of one left-padded batch (padding after a finished row included)."""
        import torch

        from .batching import left_pad
        from .sampling import run_generation_config

        ids, mask = left_pad(prompts, self.pad_token_id)
        width = ids.shape[1]
        criteria = [StopStrings(self.tokenizer, stop, width)] if stop else []
        with torch.inference_mode(), run_generation_config(self.model, self.generation_config):
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      stopping_criteria=criteria or None, **kw)
        return out[:, width:].tolist()

    def stream(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
               cancel: threading.Event | None = None, tools: list[dict] | None = None) -> Iterator[str | Completion]:
        """Stream one answer: yields text deltas (str) as tokens arrive, then one final `Completion`.

        Args:
            messages: the conversation, ending before the answer.
            max_new_tokens, temperature, top_p, seed, stop: as in `generate`.
            cancel: set it (from any thread) to stop generation after the current token.
            tools: the functions the prompt renders (None: none).

        Yields:
            str deltas whose concatenation equals the final Completion's text, then the Completion.
        """
        for _, part in self.stream_many([messages], max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p, seed=seed, stop=stop, cancels=[cancel],
                                        tools=[tools]):
            yield part

    def stream_many(self, conversations: list[list[dict]], *, max_new_tokens: int = 256, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                    cancels: list[threading.Event | None] | None = None,
                    tools: list[list[dict] | None] | None = None) -> Iterator[tuple[int, str | Completion]]:
        """Stream several answers from one left-padded batch: ``(row, delta)`` pairs, then ``(row, Completion)``.

        A row's Completion is yielded as soon as that row ends (end-of-turn, stop string, its cancel
        event, or max_new_tokens), not when the whole batch ends. For greedy decoding each row's deltas
        concatenate to exactly what `generate` returns for it.

        Args:
            conversations: the conversations, each ending before the answer.
            max_new_tokens, temperature, top_p, seed, stop: as in `generate`.
            cancels: one optional event per row; setting it ends that row after the current token.
            tools: per row, the functions its prompt renders (as in `generate`).

        Yields:
            ``(index, str)`` text deltas and, once per row, ``(index, Completion)``.
        """
        import torch

        from .batching import left_pad
        from .sampling import run_generation_config

        if not conversations:
            return
        prompts = [self.prompt_ids(c, t) for c, t in zip(conversations, tools or [None] * len(conversations))]
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, seed)
        stop = [s for s in (stop or []) if s]
        events = [(cancels[i] if cancels and i < len(cancels) else None) or threading.Event()
                  for i in range(len(prompts))]
        abandoned = threading.Event()  # ours: the consumer stopped iterating; callers' events stay untouched
        ids, mask = left_pad(prompts, self.pad_token_id)
        width = ids.shape[1]
        streamer = QueueStreamer()
        criteria = [CancelRows(events, abandoned)] + ([StopStrings(self.tokenizer, stop, width)] if stop else [])
        errors: list[BaseException] = []

        def work():
            try:
                with torch.inference_mode(), run_generation_config(self.model, self.generation_config):
                    self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                        stopping_criteria=criteria, streamer=streamer, **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, name="chattune-stream", daemon=True)
        thread.start()
        rows = [RowStream(self, len(p), max_new_tokens, stop) for p in prompts]

        def finish(i: int) -> Iterator[tuple[int, str | Completion]]:
            delta, final = rows[i].finish(cancelled=events[i].is_set())
            if delta:
                yield i, delta
            yield i, final

        try:
            while True:
                kind, step = streamer.q.get()
                if kind == "end":
                    break
                for i, t in enumerate(step):
                    if rows[i].done:
                        continue  # generate() pads a finished row; those ids are not the answer
                    delta, ended = rows[i].push(t)
                    if delta:
                        yield i, delta
                    if ended or events[i].is_set():
                        yield from finish(i)
        finally:
            # A consumer that stops iterating (client went away) must not leave the model running.
            abandoned.set()
            thread.join()
        if errors:
            raise errors[0]
        for i in range(len(prompts)):
            if not rows[i].done:
                yield from finish(i)

