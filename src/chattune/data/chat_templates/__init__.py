"""Chat templates shipped with chattune, named in ``model.chat_template`` instead of a path.

* ``smollm2-tools``: SmolLM2-Instruct's ChatML with tool calling. SmolLM2's own template renders no tools (it
  would drop them; chattune refuses such a template for tool data). This one writes exactly what SmolLM2's writes
  for conversations without tools (its default system prompt when none is given) and, with ``tools=``, the Hermes
  format exactly as Qwen2.5's template writes it: the functions in the system turn inside ``<tools></tools>``, calls
  as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, results as ``<tool_response>`` blocks in a
  user turn. So chattune's template probes, its hermes parser and vLLM's ``hermes`` tool parser all read it
  (tests/data/test_chat_templates.py). Qwen2.5's text rather than a new format: the pretrained model has seen
  it far more often than anything we would invent.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ...errors import TemplateError

SHIPPED = {"smollm2-tools": "smollm2-tools.jinja"}


def read_template(value: str) -> str:
    """The Jinja source `model.chat_template` names: a shipped template's name, else a file path.

    Raises:
        TemplateError: the file cannot be read (the message lists the shipped names).
    """
    if value in SHIPPED:
        return resources.files(__name__).joinpath(SHIPPED[value]).read_text(encoding="utf-8")
    p = Path(value).expanduser()
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise TemplateError(f"cannot read chat template file {p}: {e.strerror or e} (model.chat_template takes a "
                            f"path to a Jinja file or a shipped template: {', '.join(SHIPPED)})") from None


__all__ = ["SHIPPED", "read_template"]
