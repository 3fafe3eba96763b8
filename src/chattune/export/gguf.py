"""GGUF for llama.cpp: convert with llama.cpp's own converter, quantize with llama.cpp, check the metadata.

The GGUF must carry what chattune trained with, or the exported model babbles or never stops: the run's
exact chat template, its end-of-turn token as EOS (and every end-of-turn id llama.cpp treats as
end-of-generation), and the run's pad token. The converter reads these from the staged folder, so the
staged tokenizer_config is pointed at them first; `check_metadata` then reads them back from the GGUF
through llama.cpp itself.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChattuneError
from .llamacpp import require_binding, run_converter
from .stage import RunFacts

QUANTS = ("f16", "q8_0", "q4_k_m")
_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


@dataclass(frozen=True)
class GgufMeta:
    """What llama.cpp reads from an exported GGUF (see `check_metadata`)."""

    chat_template: str
    eos_id: int
    eog_ids: tuple[int, ...]   # the run's end-of-turn ids, each confirmed end-of-generation in llama.cpp
    pad_id: int | None
    add_bos: bool
    n_ctx_train: int           # 0 when the GGUF does not say
    n_vocab: int
    bos_text: str              # what a template's bos_token / eos_token become in llama.cpp
    eos_text: str


def prepare_for_converter(hf_dir: Path, facts: RunFacts) -> None:
    """Point the staged folder's tokenizer files at the run's template, end-of-turn EOS and pad token.

    The converter takes special tokens from tokenizer_config.json first (first value wins) and the template
    from its `chat_template` key before chat_template.jinja, so both are set to what training used.
    """
    path = hf_dir / "tokenizer_config.json"
    tc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    tc["eos_token"] = facts.eos_tokens[0]  # the template's end-of-turn: what ends an answer
    if facts.pad_token is not None:
        tc["pad_token"] = facts.pad_token
    tc.pop("chat_template", None)
    path.write_text(json.dumps(tc, indent=2, ensure_ascii=False), encoding="utf-8")
    (hf_dir / "chat_template.jinja").write_text(facts.template, encoding="utf-8")


def check_same_model(hf_dir: Path) -> None:
    """Refuse a config llama.cpp's converter accepts but llama.cpp computes differently.

    Gemma-3: llama.cpp ignores `query_pre_attn_scalar` and scales attention by 1/sqrt(head_dim) (by
    1/sqrt(hidden/heads) for its 62-layer 27B), which is what Google's checkpoints use. A config with another
    value (transformers' default is 256, whatever the head_dim) converts without a word and answers
    differently: logits move by a third of their range on a tiny random model, against f16 rounding's 1e-3.

    Raises:
        ChattuneError: naming config.json's field, its value and what llama.cpp uses.
    """
    path = hf_dir / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    text = cfg.get("text_config") or cfg
    if text.get("model_type") not in ("gemma3", "gemma3_text") or text.get("query_pre_attn_scalar") is None:
        return
    hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or hidden // heads)
    used = hidden // heads if int(text["num_hidden_layers"]) == 62 else head_dim
    if float(text["query_pre_attn_scalar"]) != float(used):
        raise ChattuneError(f"config.json: query_pre_attn_scalar is {text['query_pre_attn_scalar']}, but llama.cpp "
                            f"scales Gemma-3 attention by 1/sqrt({used}) (its head_dim rule), so the GGUF would "
                            f"answer differently from the run; export --to vllm instead")


def convert(hf_dir: Path, out_file: Path, *, outtype: str = "f16") -> str:
    """`convert_hf_to_gguf.py HF_DIR --outfile OUT --outtype f16`; returns the converter's log.

    Raises:
        ChattuneError: the converter failed, or `check_same_model` refused the config.
    """
    check_same_model(hf_dir)
    return run_converter("convert_hf_to_gguf.py", [str(hf_dir), "--outfile", str(out_file), "--outtype", outtype],
                         what="GGUF conversion")


def convert_lora(run_dir: Path, base_dir: str, out_file: Path) -> str:
    """`convert_lora_to_gguf.py RUN --base BASE --outfile OUT` (a GGUF LoRA for `llama-server --lora`)."""
    return run_converter("convert_lora_to_gguf.py", [str(run_dir), "--base", base_dir, "--outfile", str(out_file),
                                                     "--outtype", "f16"], what="GGUF LoRA conversion")


def quantize(src: Path, dst: Path, quant: str, *, threads: int = 0) -> None:
    """Quantize a GGUF with llama.cpp's `llama_model_quantize` (the `llama-quantize` tool's function).

    Raises:
        ChattuneError: unknown quant type, or llama.cpp returned an error.
    """
    if quant not in _FTYPES:
        raise ChattuneError(f"--quant {quant!r} is not supported; expected one of {', '.join(QUANTS)}")
    llama_cpp = require_binding()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[quant])
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ChattuneError(f"llama.cpp could not quantize {src.name} to {quant} (llama_model_quantize returned {rc})")


def load_vocab_only(gguf: Path):
    """A llama.cpp model with the vocabulary only (fast: no weights), for tokenization and metadata."""
    llama_cpp = require_binding()
    return llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)


def check_metadata(gguf: Path, facts: RunFacts) -> GgufMeta:
    """Read back what llama.cpp sees and fail if it is not what the run trained with.

    Raises:
        ChattuneError: the template differs, an end-of-turn id is not end-of-generation, or the pad differs.
    """
    llama_cpp = require_binding()
    llm = load_vocab_only(gguf)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        tpl = llm.metadata.get("tokenizer.chat_template", "")
        if tpl != facts.template:
            raise ChattuneError(f"{gguf.name}: the embedded chat template differs from the run's "
                                f"({len(tpl)} vs {len(facts.template)} characters)")
        not_eog = [i for i in facts.eos_ids if not llama_cpp.llama_vocab_is_eog(vocab, i)]
        if not_eog:
            raise ChattuneError(f"{gguf.name}: llama.cpp would not stop on end-of-turn id(s) {not_eog}")
        pad = int(llama_cpp.llama_vocab_pad(vocab))
        pad_id = None if pad < 0 else pad
        if facts.pad_id is not None and pad_id != facts.pad_id:
            raise ChattuneError(f"{gguf.name}: pad token {pad_id} in the GGUF, the run used {facts.pad_id}")
        bos, eos = int(llama_cpp.llama_vocab_bos(vocab)), int(llama_cpp.llama_vocab_eos(vocab))
        arch = llm.metadata.get("general.architecture", "")  # a vocab-only load reports no context size itself

        def text(i: int) -> str:
            return llm.detokenize([i], special=True).decode("utf-8", "replace") if i >= 0 else ""

        return GgufMeta(chat_template=tpl, eos_id=eos, eog_ids=tuple(facts.eos_ids), pad_id=pad_id,
                        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
                        n_ctx_train=int(llm.metadata.get(f"{arch}.context_length", 0)), n_vocab=llm.n_vocab(),
                        bos_text=text(bos), eos_text=text(eos))
    finally:
        llm.close()
