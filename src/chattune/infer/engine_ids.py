"""What the engines that run outside transformers (vLLM, llama.cpp) share: the run's renderer without its
weights, the context-window rule, and the one way their generated token ids become text.

Those engines hand back token ids, never text: the text is decoded here with the run's own tokenizer by
the rule `Generator` applies (full decode of the new ids with special tokens skipped, cut at the first
end-of-turn id and before the first stop string, an incomplete UTF-8 tail held back while streaming and
dropped at a cut), so an engine's detokenizer can never make its answers differ from `chattune chat`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from ..errors import ConfigError
from .engine import Sampling
from .generate import Completion
from .prompt import PromptRenderer
from .reasoning import split_reasoning
from .serve_schema import APIError
from .stopping import cut_at_stop, held_back


@dataclass(frozen=True)
class RunSource:
    """A path given to `chattune serve`, read without loading weights.

    Attributes:
        path: the run dir or model folder.
        renderer: how its conversations become prompt ids (what `Generator.from_path` would build).
        is_adapter: a LoRA/DoRA/QLoRA run dir (served on its base).
        base: the base's local folder or hub id for an adapter; the folder itself otherwise.
        max_length: the run's training max_length (None for a plain folder).
        default_temperature, default_top_p: for requests that omit them (the generation_config's when it
            samples, else OpenAI's 1.0).
    """

    path: Path
    renderer: PromptRenderer
    is_adapter: bool
    base: str
    max_length: int | None
    default_temperature: float = 1.0
    default_top_p: float = 1.0


def read_source(path: str | Path, name: str | None = None) -> RunSource:
    """Read a run dir or a (merged) model folder the way `rundir.load.load_run` does, minus the weights.

    The renderer gets the same tokenizer, template, thinking policy, system prompt, date and end-of-turn ids
    as `Generator.from_path(path)`, so any engine renders and stops exactly like the hf one.

    Raises:
        ModelError: not a run dir or model folder (the message names what is missing).
    """
    from transformers import GenerationConfig

    from ..model.load import load_tokenizer, resolve_source
    from ..rundir.layout import GENERATION_FILE, is_run_dir
    from ..rundir.load import run_tokenizer, stop_token_ids
    from ..rundir.read import read_merge_report, read_run

    p = Path(path)
    name = name or p.name
    if is_run_dir(p):
        run = read_run(p)
        cfg = run.config
        tok = run_tokenizer(p, cfg.model)
        base = resolve_source(cfg.model) if run.is_adapter else str(p)
        # load_run applies the run's generation_config.json over the base's (its EOS list)
        gen_dir = p if (p / GENERATION_FILE).is_file() else Path(base)
        thinking, system, date = cfg.data.thinking, run.system_prompts.default, cfg.data.date
        is_adapter, max_length = run.is_adapter, cfg.data.max_length
    else:
        from ..config import ModelConfig
        from ..errors import ModelError

        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is neither a chattune run dir nor a model folder (no config.json)")
        tok = load_tokenizer(ModelConfig(name_or_path=str(p)), source=str(p))
        base, gen_dir, is_adapter, max_length = str(p), p, False, None
        rep = read_merge_report(p) or {}  # a `chattune merge` output renders as its run was trained
        thinking, system, date = rep.get("thinking") or "off", rep.get("system"), rep.get("date")
    gen = GenerationConfig.from_pretrained(gen_dir) if (gen_dir / GENERATION_FILE).is_file() else None
    # stop_token_ids reads only `.generation_config` of the model it is given
    eos = stop_token_ids(SimpleNamespace(generation_config=gen), tok)
    renderer = PromptRenderer(tok, name, tuple(eos), thinking=thinking, system=system, date=date)
    temp, top_p = 1.0, 1.0  # OpenAI's defaults, unless the generation_config samples (as the hf engine)
    if gen is not None and gen.do_sample:
        temp, top_p = float(gen.temperature if gen.temperature is not None else 1.0), float(gen.top_p or 1.0)
    return RunSource(path=p, renderer=renderer, is_adapter=is_adapter, base=str(base), max_length=max_length,
                     default_temperature=temp, default_top_p=top_p)


def model_names(paths: list[str]) -> list[str]:
    """One model name per path, its folder's name (the hf engine's rule: names must differ)."""
    names: list[str] = []
    for p in paths:
        name = Path(p).name
        if name in names:
            raise ConfigError(f"two runs would both be served as {name!r}; rename one run dir")
        names.append(name)
    return names


def fit_context(n_prompt: int, sampling: Sampling, limit: int | None) -> Sampling:
    """Check a prompt of `n_prompt` tokens fits a context of `limit`; trim a defaulted max_tokens to fit.

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


class IdsToText:
    """One answer's generated ids → streamed text deltas and the final `Completion` (see the module doc).

    Feed ids as the engine produces them; `done` turns True at an end-of-turn id, a completed stop string
    or max_new_tokens, and later ids are ignored (an engine may overshoot by a step).
    """

    def __init__(self, renderer: PromptRenderer, prompt_tokens: int, sampling: Sampling):
        self.tok = renderer.tokenizer
        self.eos = set(renderer.eos_token_ids)
        self.opened = renderer.reasoning_opened
        self.prompt_tokens = prompt_tokens
        self.max_new = sampling.max_new_tokens
        self.stop = [s for s in sampling.stop if s]
        self.ids: list[int] = []
        self.sent = ""
        self.hit_eos = self.hit_stop = self.done = False

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def feed(self, ids: list[int]) -> str:
        """Take new ids; return the text they make ready ("" when held back or done)."""
        ready = None
        for t in ids:
            if self.done:
                break
            self.ids.append(int(t))
            if t in self.eos:
                self.hit_eos = self.done = True
                break
            # the full decode of the answer so far: multi-byte characters split across ids come out whole
            text, hit = cut_at_stop(self._decode(self.ids), self.stop)
            ready = text if hit else text[:len(text) - held_back(text, self.stop)]
            self.hit_stop = hit
            self.done = hit or len(self.ids) >= self.max_new
        if ready is not None and len(ready) > len(self.sent) and ready.startswith(self.sent):
            delta, self.sent = ready[len(self.sent):], ready
            return delta
        return ""

    def completion(self, cancelled: bool = False) -> Completion:
        """The final answer (what `Generator.generate` returns for the same ids)."""
        n = len(self.ids)
        kept = self.ids[:-1] if self.hit_eos else self.ids
        text, hit_stop = cut_at_stop(self._decode(kept), self.stop)
        if hit_stop:  # count the ids up to the one that completed the stop string
            n = next(k for k in range(1, len(kept) + 1) if cut_at_stop(self._decode(kept[:k]), self.stop)[1])
        reason = "stop" if (self.hit_eos or hit_stop or cancelled or n < self.max_new) else "length"
        if not (self.hit_eos or hit_stop):
            text = text.rstrip("\ufffd")  # cut mid-character: the incomplete tail streaming held back
        split = split_reasoning(text, opened=self.opened)
        return Completion(text=text, prompt_tokens=self.prompt_tokens, completion_tokens=n, finish_reason=reason,
                          reasoning=split.reasoning, content=split.content)

    def final_delta(self, c: Completion) -> str:
        """The text of `c` not yet streamed (held back until the end)."""
        return c.text[len(self.sent):] if c.text.startswith(self.sent) else ""
