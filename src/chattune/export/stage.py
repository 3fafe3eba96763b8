"""What an export needs from a run, read once: the run's facts and a plain Hugging Face folder of its weights.

Every target starts from the same two things: `RunFacts` (tokenizer, chat template, thinking policy,
end-of-turn ids, pad, context length, default system prompt — exactly as training used them) and a staged
HF folder (the run dir's own weights, or the product's `merge` of its adapter). Targets never re-derive
these; the verification compares each engine with the same facts.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

# Files of a full-weights run that make a self-contained HF folder (checkpoints, metrics etc. stay behind).
_HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
             "chat_template.jinja", "model.safetensors.index.json")


@dataclass(frozen=True)
class RunFacts:
    """The run as an export sees it (all from the run dir; nothing re-decided).

    Attributes:
        run_dir: the run directory.
        is_adapter: True for LoRA/DoRA/QLoRA runs (the export merges unless --lora-only).
        method: the training method (lora, dora, qlora, full, freeze).
        base: the base model as configured (what an adapter applies to).
        base_source: the base model's resolved local folder or hub id.
        architecture: config.json's architectures[0] of the base/full model.
        thinking: "off" or "keep": the policy inference renders with after training (a ``mixed`` run: "keep").
        template: the chat template training rendered with.
        template_kwargs: extra apply_chat_template kwargs for the thinking policy.
        eos_ids: end-of-turn token ids (the template's first), as generation_config.json lists them.
        eos_tokens: their texts.
        pad_id, pad_token: the pad token the run used.
        max_length: the training max_length (context for deployment defaults).
        system: the default system prompt from the training config (None: none).
        tool_format: the tool-call format the run trained its calls in (`chattune.infer.tool_calls`; its name is
            vLLM's parser name), None when no training row carried tools.
    """

    run_dir: Path
    is_adapter: bool
    method: str
    base: str
    base_source: str
    architecture: str
    thinking: str
    template: str
    template_kwargs: dict
    eos_ids: tuple[int, ...]
    eos_tokens: tuple[str, ...]
    pad_id: int | None
    pad_token: str | None
    max_length: int
    system: str | None
    tool_format: str | None = None


def read_facts(run_dir: str | Path):
    """Read a run dir for export.

    Returns:
        (RunFacts, the run's tokenizer with its training chat template, the run's Config).

    Raises:
        ModelError: not a run dir, no weights, or no chat template.
    """
    from ..data.render import end_of_turn_ids, inference_thinking, template_kwargs
    from ..infer.tool_calls import tool_call_format
    from ..model.load import resolve_source
    from ..rundir.layout import GENERATION_FILE
    from ..rundir.load import run_tokenizer
    from ..rundir.read import read_run, read_tool_rows

    run = read_run(run_dir)  # raises with the missing file named
    cfg = run.config
    tok = run_tokenizer(run.path, cfg.model)
    if not tok.chat_template:
        raise ModelError(f"{run.path}: the run has no chat template; nothing to export a chat model with")
    gen_file = run.path / GENERATION_FILE
    eos: list[int] = []
    if gen_file.is_file():
        raw = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id")
        eos = [int(i) for i in (raw if isinstance(raw, list) else [raw]) if i is not None]
    eos = eos or list(end_of_turn_ids(tok))
    if run.is_adapter:
        base_source = resolve_source(cfg.model)
        cfg_json = Path(base_source) / "config.json"
    else:
        base_source = str(run.path)
        cfg_json = run.path / "config.json"
    arch = "unknown"
    if cfg_json.is_file():
        arch = (json.loads(cfg_json.read_text(encoding="utf-8")).get("architectures") or ["unknown"])[0]
    facts = RunFacts(run_dir=run.path, is_adapter=run.is_adapter, method=cfg.method.type, base=cfg.model.name_or_path,
                     base_source=str(base_source), architecture=arch, thinking=inference_thinking(cfg.data.thinking),
                     template=tok.chat_template, template_kwargs=template_kwargs(tok, cfg.data.thinking),
                     eos_ids=tuple(eos), eos_tokens=tuple(tok.convert_ids_to_tokens(eos)),
                     pad_id=tok.pad_token_id, pad_token=tok.pad_token, max_length=cfg.data.max_length,
                     system=cfg.data.system,
                     tool_format=tool_call_format(tok).name if read_tool_rows(run.path) else None)
    return facts, tok, cfg


def stage_hf_folder(facts: RunFacts, dest: Path) -> Path:
    """A plain HF model folder of the run's weights at `dest` (which must not exist).

    An adapter run goes through the product's `merge` (fp32, so the converter rounds once, to the export's
    precision); its own adapter-vs-merged check is skipped because the export's behaviour parity compares
    the final engine with the adapter run itself, which covers the merge too. A full-weights run is copied.
    """
    if facts.is_adapter:
        from ..infer.merge import merge

        merge(facts.run_dir, dest, dtype="float32", n_verify=0)
        return dest
    dest.mkdir(parents=True)
    names = list(_HF_FILES) + [p.name for p in facts.run_dir.glob("model*.safetensors")]
    for name in names:
        src = facts.run_dir / name
        if src.is_file():
            shutil.copyfile(src, dest / name)
    if not (dest / "config.json").is_file():
        raise ModelError(f"{facts.run_dir} holds weights but no config.json; it is not a complete model folder")
    return dest
