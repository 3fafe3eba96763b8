"""What the engines that run outside transformers (vLLM, llama.cpp) need from a run without loading its
weights: its renderer (tokenizer, template, end-of-turn ids, system prompt) and a served name.

Those engines hand back token ids, never text: the text comes from `answer.RowStream` over this renderer,
the rule `Generator` applies, so an engine's own detokenizer can never make its answers differ from
`chattune chat`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .prompt import PromptRenderer


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
        generation: the generation_config's fields that change which token comes next
            (`sampling.token_fields`): the engine applies them as `generate` does or refuses them
            (`refuse_fields`).
        generation_file: the generation_config.json they come from (None: none).
    """

    path: Path
    renderer: PromptRenderer
    is_adapter: bool
    base: str
    max_length: int | None
    default_temperature: float = 1.0
    default_top_p: float = 1.0
    generation: dict = field(default_factory=dict)
    generation_file: Path | None = None


def read_source(path: str | Path, name: str | None = None) -> RunSource:
    """Read a run dir or a (merged) model folder the way `rundir.load.load_run` does, minus the weights (both
    read it through `rundir.load.read_run_text`).

    The renderer gets the same tokenizer, template, thinking policy, system prompt, date and end-of-turn ids
    as `Generator.from_path(path)`, so any engine renders and stops exactly like the hf one.

    Raises:
        ModelError: not a run dir or model folder (the message names what is missing).
    """
    from ..data.render import inference_thinking
    from ..errors import ModelError
    from ..model.load import resolve_source
    from ..rundir.layout import GENERATION_FILE, is_run_dir
    from ..rundir.load import read_generation_config, read_run_text, stop_token_ids
    from .sampling import default_sampling, token_fields

    p = Path(path)
    name = name or p.name
    if not is_run_dir(p) and not (p / "config.json").is_file():
        raise ModelError(f"{p} is neither a chattune run dir nor a model folder (no config.json)")
    text = read_run_text(p)
    tok, cfg = text.tokenizer, text.config
    is_adapter = text.kind == "adapter"
    base = resolve_source(cfg.model) if is_adapter and cfg is not None else text.source
    # load_run applies the run's generation_config.json over the base's (its EOS list)
    gen_dir = p if (p / GENERATION_FILE).is_file() else Path(base)
    gen = read_generation_config(gen_dir)
    eos = stop_token_ids(gen, tok)
    renderer = PromptRenderer(tok, name, tuple(eos), thinking=inference_thinking(text.thinking), system=text.system,
                              date=text.date)
    temp, top_p = default_sampling(gen)
    return RunSource(path=p, renderer=renderer, is_adapter=is_adapter, base=str(base),
                     max_length=cfg.data.max_length if cfg is not None else None, default_temperature=temp,
                     default_top_p=top_p, generation=token_fields(gen),
                     generation_file=gen_dir / GENERATION_FILE if gen is not None else None)


def refuse_fields(source: RunSource, engine: str, applied: set[str]) -> None:
    """Refuse a run whose generation_config sets fields the `engine` does not apply as `generate` does
    (`chattune chat` would answer otherwise); `applied` are the ones it maps to its own sampler.

    Raises:
        ConfigError: naming the file, the fields and what to do.
    """
    bad = {k: v for k, v in source.generation.items() if k not in applied}
    if bad:
        sets = ", ".join(f"{k}={v!r}" for k, v in bad.items())
        raise ConfigError(f"{source.generation_file} sets {sets}, which the {engine} engine cannot apply as "
                          f"`chattune chat` does (it applies {', '.join(sorted(applied)) or 'none of these'}); "
                          "serve this run with --engine hf, or remove the field(s) from that file")


def model_names(paths: list[str]) -> list[str]:
    """One model name per path, its folder's name (the hf engine's rule: names must differ)."""
    names: list[str] = []
    for p in paths:
        name = Path(p).name
        if name in names:
            raise ConfigError(f"two runs would both be served as {name!r}; rename one run dir")
        names.append(name)
    return names
