"""The OpenAI wire format for `chattune serve`: request validation, error objects and response shapes.

Kept apart from `serve.py` (the worker and the app) so the protocol can be read in one place.

Request policy (OpenAI semantics; see docs for each field):
* honoured: messages (system/developer/user/assistant/tool; content as a string or a list of
  ``{"type": "text", "text": ...}`` parts; assistant ``tool_calls``), max_tokens / max_completion_tokens,
  temperature, top_p, stop (str or up to 4 strings), seed, stream, stream_options.include_usage, n=1,
  tools + tool_choice (``auto``, ``none``, ``required``, a named function; `serve_tools`).
* rejected with 400 (they would change the *shape* of the answer, so silently ignoring them would lie):
  n > 1, logprobs=true / top_logprobs, the legacy functions / function_call / role "function" (use tools),
  non-text response_format, non-text content parts, tool messages that answer no earlier call.
* rejected with 400 unless neutral (`SAMPLING_FIELDS`): presence/frequency_penalty, logit_bias and the
  sampling fields vLLM takes beyond OpenAI's (top_k, min_p, repetition_penalty, ...). A served answer is
  `chattune chat`'s for the same settings, and chat takes these from the run's generation_config only
  (which every engine applies or refuses at startup); ignored, they would silently answer otherwise.
  Their neutral values (what clients send by default) are accepted.
* ignored (bookkeeping): model (any string; the answer names the served model), user, metadata, store,
  service_tier, parallel_tool_calls, and any field this server does not know — like vLLM, so clients
  that send extra fields keep working.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 4  # OpenAI's limit on stop sequences
# Per-request sampling fields this server refuses (module doc) → the values that change nothing.
SAMPLING_FIELDS: dict[str, tuple] = {
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
    "top_k": (None, 0, -1), "min_p": (None, 0), "repetition_penalty": (None, 1), "min_tokens": (None, 0),
    "typical_p": (None, 1), "top_a": (None, 0), "tfs": (None, 1), "length_penalty": (None, 1),
    "use_beam_search": (None, False), "best_of": (None, 1), "bad_words": (None, []), "allowed_token_ids": (None,),
}
_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(errors: list[dict]) -> APIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad field.

    Args:
        errors: `RequestValidationError.errors()`.

    Returns:
        An `APIError` (400) whose `param` is the dotted field path, e.g. ``messages.0.role``.
    """
    if not errors:
        return APIError(400, "invalid request body")
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    # pydantic puts the union branch in the path (messages.0.content.str); drop type names.
    loc = [p for p in loc if p not in _TYPE_NAMES and "[" not in p]
    param = ".".join(loc) or None
    if e.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: "
                        f"{e.get('ctx', {}).get('error', e.get('msg'))}", code="invalid_json")
    found = e.get("input")
    shown = json.dumps(found, ensure_ascii=False, default=str) if found is not None else "nothing"
    if len(shown) > 120:
        shown = shown[:117] + "..."
    extra = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    where = f"'{param}'" if param else "the request body"
    return APIError(400, f"Invalid value for {where}: {e.get('msg')}; got {shown}{extra}", param=param,
                    code="invalid_value" if param else "invalid_request_body")


class _Open(BaseModel):
    # extra="allow": OpenAI keeps adding fields; clients send them; unknown ones are ignored (module doc).
    # strict: JSON types must match ("10" is not an integer), as the OpenAI API checks them.
    model_config = ConfigDict(extra="allow", strict=True)


class CalledFunction(_Open):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends the JSON text; an object is taken as is


class MessageToolCall(_Open):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Open):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")  # OpenAI's rule (plus '.' and ':' as vLLM takes)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Open):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: FunctionName


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    """The body of ``POST /v1/chat/completions`` (only the fields this server looks at are typed)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.manual_seed accepts
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None


def _content_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"messages[{i}].content[{j}]: only text content parts "
                           f"({{\"type\": \"text\", \"text\": ...}}) are supported; got type {kind!r}",
                           param=f"messages.{i}.content.{j}.type", code="unsupported_content")
        texts.append(part["text"])
    # OpenAI joins text parts without a separator for text-only models.
    return "".join(texts)


def check_unsupported(req: ChatCompletionRequest) -> None:
    """Reject the fields whose meaning this server cannot honour (see module doc).

    Raises:
        APIError: 400 naming the field.
    """
    if req.n is not None and req.n != 1:
        raise APIError(400, f"n={req.n} is not supported: this server returns one choice per request (n=1); "
                       "send several requests instead", param="n", code="unsupported_value")
    if req.logprobs or req.top_logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs",
                       code="unsupported_parameter")
    if req.functions is not None or req.function_call is not None:
        raise APIError(400, "the legacy 'functions'/'function_call' fields are not supported; send 'tools' and "
                       "'tool_choice' instead", param="functions" if req.functions is not None else "function_call",
                       code="unsupported_parameter")
    if req.tool_choice is not None and not req.tools and req.tool_choice != "none":
        raise APIError(400, "'tool_choice' is only allowed when 'tools' are specified", param="tool_choice",
                       code="invalid_value")
    if isinstance(req.tool_choice, NamedToolChoice):
        declared = [t.function.name for t in req.tools or []]
        if req.tool_choice.function.name not in declared:
            raise APIError(400, f"tool_choice names function {req.tool_choice.function.name!r}, which is not in "
                           f"'tools' ({', '.join(map(repr, declared))})", param="tool_choice.function.name",
                           code="invalid_value")
    for name, neutral in SAMPLING_FIELDS.items():
        value = getattr(req, name, None)
        if value not in neutral:
            raise APIError(400, f"{name}={json.dumps(value)} is not supported: answers here are `chattune chat`'s, "
                           "which takes sampling settings other than temperature, top_p, seed and stop from the "
                           "run's generation_config.json only (set them there; every engine applies them or refuses "
                           "the run at startup)", param=name, code="unsupported_parameter")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise APIError(400, f"response_format type {req.response_format.get('type')!r} is not supported; "
                       "only 'text'", param="response_format.type", code="unsupported_value")


def _arguments(call: MessageToolCall, i: int, j: int) -> dict:
    args: Any = call.function.arguments
    if isinstance(args, str):
        text = args
        try:
            args = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise APIError(400, f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON ({e}): "
                           f"{text[:80]!r}", param=f"messages.{i}.tool_calls.{j}.function.arguments",
                           code="invalid_value") from None
    if not isinstance(args, dict):
        raise APIError(400, f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object; got "
                       f"{type(args).__name__}", param=f"messages.{i}.tool_calls.{j}.function.arguments",
                       code="invalid_value")
    return args


def to_messages(req: ChatCompletionRequest) -> list[dict]:
    """The request's messages as plain dicts for the chat template (the conversation shape of
    `chattune.data.tools`).

    "developer" (OpenAI's newer name for system) becomes "system"; text parts are joined. An assistant
    message's ``tool_calls`` keep their ids, arguments parsed to objects, content "" when it only calls; a
    ``tool`` message keeps ``tool_call_id`` and gets the called function's ``name`` (templates that show
    results by name read it).

    Raises:
        APIError: 400 for function messages or function_call, a tool message answering no earlier call,
            arguments that are not a JSON object, non-text content parts.
    """
    out: list[dict] = []
    called: dict[str, str] = {}  # tool call id -> function name, of the calls made so far
    for i, m in enumerate(req.messages):
        if m.role == "function" or (m.model_extra or {}).get("function_call"):
            raise APIError(400, f"messages[{i}]: the legacy function role/function_call is not supported; use "
                           "assistant tool_calls and role 'tool'", param=f"messages.{i}.role", code="unsupported_value")
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role, "content": _content_text(m.content, i)}
        if m.tool_calls:
            if role != "assistant":
                raise APIError(400, f"messages[{i}]: only assistant messages carry tool_calls; this one is {role!r}",
                               param=f"messages.{i}.tool_calls", code="invalid_value")
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": _arguments(c, i, j)}}
                                 for j, c in enumerate(m.tool_calls)]
            called.update({c.id: c.function.name for c in m.tool_calls})
        if role == "tool":
            if m.tool_call_id not in called:
                known = ", ".join(map(repr, called)) or "none yet"
                raise APIError(400, f"messages[{i}]: a 'tool' message must answer a tool call of an earlier assistant "
                               f"message; tool_call_id {m.tool_call_id!r} matches none (calls so far: {known})",
                               param=f"messages.{i}.tool_call_id", code="invalid_value")
            msg["tool_call_id"] = m.tool_call_id
            msg["name"] = called[m.tool_call_id]
        out.append(msg)
    return out


def stop_list(stop: str | list[str] | None) -> tuple[str, ...]:
    """Normalise `stop` to a tuple of non-empty strings.

    Raises:
        APIError: more than 4 stop sequences.
    """
    items = [stop] if isinstance(stop, str) else list(stop or [])
    if len(items) > MAX_STOP:
        raise APIError(400, f"at most {MAX_STOP} stop sequences are allowed; got {len(items)}", param="stop",
                       code="invalid_value")
    return tuple(s for s in items if s)


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(cid: str, model: str, text: str | None, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, reasoning: str | None = None, tool_calls: list[dict] | None = None) -> dict:
    """A non-streaming ``chat.completion`` object; `reasoning` (the think block) goes out as
    ``message.reasoning_content``, as vLLM and DeepSeek's API send it; `tool_calls` as ``message.tool_calls``
    (content is then None when the model wrote nothing else, as OpenAI sends it)."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message,
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(cid: str, created: int, model: str, delta: dict | None, finish_reason: str | None = None,
               *, with_usage_field: bool = False, usage_value: dict | None = None) -> dict:
    """One ``chat.completion.chunk``; `delta=None` makes the usage-only chunk (empty choices)."""
    body: dict = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                  "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish_reason}]}
    if with_usage_field:
        # With include_usage, OpenAI sends "usage": null on every chunk and the numbers on the last one.
        body["usage"] = usage_value
    return body


def sse(obj: dict | str) -> str:
    """One server-sent event: ``data: <json>\\n\\n`` (or the literal ``[DONE]``)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"
