"""OpenAI Chat Completions <-> Anthropic Messages translation (pure, no I/O).

`to_anthropic` turns a ``POST /v1/chat/completions`` body into a ``/v1/messages``
body. The way back is :mod:`alicode_gw.openai.response`: `to_openai` turns the
Anthropic ``Message`` into a ``chat.completion``, `StreamTranslator` does the same for
streams. Anything that
cannot be translated without changing the answer is an
:class:`~alicode_gw.errors.InvalidRequestError` naming the parameter - never a
silent drop.

Request parameters, one by one:

Translated
    ``model`` as is. ``messages``: ``system`` and ``developer`` messages become
    ``system`` text blocks, in order (Anthropic has one system prompt, so one sent
    mid-conversation is hoisted there too); ``user`` content parts ``text`` and
    ``image_url`` (``data:image/{jpeg,png,gif,webp};base64,...`` -> a base64 image
    source, ``http(s)://`` -> a url source; ``detail`` is ignored: Anthropic sizes
    images itself); ``assistant`` text (and ``refusal`` text) then its
    ``tool_calls`` as ``tool_use`` blocks (``arguments`` must be a JSON object
    string; ``""`` means ``{}``); ``tool`` messages become ``tool_result`` blocks,
    consecutive ones - and a user message right after them - merged into one user
    turn. A message's ``name`` is ignored (Anthropic has no participant names).
    ``max_completion_tokens`` or (deprecated) ``max_tokens`` -> ``max_tokens``,
    `DEFAULT_MAX_TOKENS` when both are absent; both with different values is a 400.
    ``temperature`` (0-1 only: Anthropic's range; above 1 is a 400, never rescaled),
    ``top_p``, ``stop`` (a string or a list of at most 4) -> ``stop_sequences``,
    ``stream``. ``tools`` (``type: "function"``; ``parameters`` -> ``input_schema``,
    ``{"type": "object", "properties": {}}`` when absent; ``strict: true`` kept).
    ``tool_choice``: ``auto``, ``none``, ``required`` -> ``any``, a named function ->
    ``tool``; ``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``.
    ``safety_identifier``, else ``user`` -> ``metadata.user_id``.
    ``response_format``: ``text`` -> nothing, ``json_schema`` ->
    ``output_config.format`` (Anthropic's structured outputs).
    ``stream_options.include_usage`` is read by the caller (`stream_include_usage`).
    Anthropic extensions passed through: ``top_k``, ``thinking``.

Accepted and ignored (they do not change the answer)
    ``seed`` (a best-effort determinism hint with no Anthropic counterpart),
    ``metadata`` and ``store`` (OpenAI's stored completions; the gateway stores no
    prompts), ``prompt_cache_key``, ``prompt_cache_retention``,
    ``prompt_cache_options`` (cache routing hints), ``prediction`` (a latency
    optimisation; the output is the same), ``service_tier`` ``auto``/``default``,
    ``stream_options.include_obfuscation``.

Rejected with a 400 naming the parameter, unless given its neutral value
    ``n`` (1), ``logprobs`` (false), ``top_logprobs`` (0), ``logit_bias`` (empty),
    ``frequency_penalty`` and ``presence_penalty`` (0), ``audio`` (null),
    ``modalities`` (``["text"]``), ``reasoning_effort`` (``none``; use ``thinking``),
    ``verbosity`` (``medium``), ``web_search_options`` and ``moderation`` (null),
    ``service_tier`` other than ``auto``/``default``, ``response_format``
    ``json_object``; always: ``functions``/``function_call`` (deprecated: use
    ``tools``), unknown parameters, ``custom`` tools, ``allowed_tools`` tool
    choices, ``input_audio`` and ``file`` content parts. ``null`` means "absent"
    for every parameter.
"""

from __future__ import annotations

import json
import re
from typing import Any

from alicode_gw.errors import InvalidRequestError
from alicode_gw.requestbody import MAX_JSON_DEPTH, json_too_deep

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent upstream when the OpenAI request gives no limit.

Anthropic requires ``max_tokens``; OpenAI does not. 4096 is within the output
ceiling of every Claude model, so it is valid for any model the request names; it
keeps the billing hold (which reserves the maximum output) modest; and it is not the
model ceiling, which the product documents forbid imposing silently. An answer cut
there ends with ``finish_reason: "length"``, so the limit is visible to the client.
"""

_MAX_STOP = 4
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_IGNORED = frozenset(
    {"seed", "metadata", "store", "prompt_cache_key", "prompt_cache_retention",
     "prompt_cache_options", "prediction"}
)  # fmt: skip
_HANDLED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
     "top_k", "stop", "stream", "stream_options", "tools", "tool_choice",
     "parallel_tool_calls", "user", "safety_identifier", "response_format", "thinking",
     "service_tier",
     # rejected unless neutral: checked by _reject_unsupported
     "n", "logprobs", "top_logprobs", "logit_bias", "frequency_penalty", "presence_penalty",
     "audio", "modalities", "reasoning_effort", "verbosity", "web_search_options",
     "moderation", "functions", "function_call"}
)  # fmt: skip


def _bad(message: str, param: str) -> InvalidRequestError:
    """A 400 naming `param` (in ``param`` and, as Anthropic does, in the message)."""
    if param not in message:
        message = f"{param}: {message}"
    return InvalidRequestError(message, param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------- parameters


def _reject_unsupported(payload: dict[str, Any]) -> None:
    """400 for every parameter Anthropic cannot honour, unless it has its neutral value."""
    for key in payload:
        if key not in _HANDLED and key not in _IGNORED:
            raise _bad(f"Unrecognized request argument supplied: {key}", key)

    def neutral(key: str, ok: bool, why: str) -> None:
        if payload.get(key) is not None and not ok:
            raise _bad(f"{key} is not supported by this gateway: {why}", key)

    get = payload.get
    neutral("n", get("n") == 1 and _is_int(get("n")), "only one choice (n=1) can be generated")
    neutral("logprobs", get("logprobs") is False, "Claude does not return log probabilities")
    neutral(
        "top_logprobs",
        _is_int(get("top_logprobs")) and get("top_logprobs") == 0,
        "Claude does not return log probabilities",
    )
    neutral("logit_bias", get("logit_bias") == {}, "Claude has no token biasing")
    for key in ("frequency_penalty", "presence_penalty"):
        value = get(key)
        neutral(key, _is_number(value) and value == 0, "Claude has no repetition penalties")
    neutral("audio", False, "Claude does not produce audio")
    neutral("modalities", get("modalities") == ["text"], "Claude produces text only")
    neutral(
        "reasoning_effort",
        get("reasoning_effort") == "none",
        "pass Anthropic's `thinking` object to enable extended thinking",
    )
    neutral("verbosity", get("verbosity") == "medium", "Claude has no verbosity setting")
    neutral("web_search_options", False, "web search is not available on this route")
    neutral("moderation", False, "OpenAI moderation is not available")
    neutral("functions", False, "deprecated by OpenAI; use `tools`")
    neutral("function_call", False, "deprecated by OpenAI; use `tool_choice`")
    neutral(
        "service_tier",
        get("service_tier") in ("auto", "default"),
        "only the default service tier is offered",
    )


def _max_tokens(payload: dict[str, Any]) -> int:
    values = []
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _bad(f"{key} must be an integer of at least 1", key)
        values.append(value)
    if len(values) == 2 and values[0] != values[1]:
        raise _bad(
            "max_tokens and max_completion_tokens differ; send only max_completion_tokens",
            "max_tokens",
        )
    return values[0] if values else DEFAULT_MAX_TOKENS


def _sampling(payload: dict[str, Any], body: dict[str, Any]) -> None:
    temperature = payload.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 1:
            raise _bad(
                "temperature must be a number from 0 to 1 (Claude's range; "
                "OpenAI's values above 1 have no equivalent)",
                "temperature",
            )
        body["temperature"] = temperature
    top_p = payload.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise _bad("top_p must be a number from 0 to 1", "top_p")
        body["top_p"] = top_p
    top_k = payload.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < 0:
            raise _bad("top_k must be a non-negative integer", "top_k")
        body["top_k"] = top_k
    stop = payload.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop must be a string or a list of strings", "stop")
        if len(stop) > _MAX_STOP:
            raise _bad(f"stop takes at most {_MAX_STOP} sequences", "stop")
        if stop:
            body["stop_sequences"] = stop


def _streaming(payload: dict[str, Any], body: dict[str, Any]) -> None:
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    options = payload.get("stream_options")
    if options is not None:
        if not stream:
            raise _bad(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        if not isinstance(options, dict):
            raise _bad("stream_options must be an object", "stream_options")
        for key, value in options.items():
            if key not in ("include_usage", "include_obfuscation"):
                raise _bad(f"Unrecognized stream option: {key}", f"stream_options.{key}")
            if value is not None and not isinstance(value, bool):
                raise _bad(f"stream_options.{key} must be a boolean", f"stream_options.{key}")
    if stream:
        body["stream"] = True


def stream_include_usage(payload: dict[str, Any]) -> bool:
    """Whether a (validated) request asked for the final usage chunk."""
    options = payload.get("stream_options")
    return (
        bool(payload.get("stream"))
        and isinstance(options, dict)
        and bool(options.get("include_usage"))
    )


def _identity(payload: dict[str, Any], body: dict[str, Any]) -> None:
    for key in ("safety_identifier", "user"):
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _bad(f"{key} must be a string", key)
        if value:
            body["metadata"] = {"user_id": value}
            return


def _response_format(payload: dict[str, Any], body: dict[str, Any]) -> None:
    fmt = payload.get("response_format")
    if fmt is None:
        return
    ftype = fmt.get("type") if isinstance(fmt, dict) else None
    if ftype == "text":
        return
    if ftype == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad(
                "response_format.json_schema.schema must be a JSON schema object",
                "response_format.json_schema.schema",
            )
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return
    if ftype == "json_object":
        raise _bad(
            "response_format json_object has no Claude equivalent; use json_schema",
            "response_format",
        )
    raise _bad("response_format.type must be text or json_schema", "response_format.type")


# ---------------------------------------------------------------- tools


def _tools(payload: dict[str, Any], body: dict[str, Any]) -> None:
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    out: list[dict[str, Any]] = []
    for j, tool in enumerate(tools or ()):
        where = f"tools[{j}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad("only tools of type 'function' are supported", f"{where}.type")
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise _bad("a function tool needs function.name", f"{where}.function.name")
        assert isinstance(fn, dict)
        converted: dict[str, Any] = {"name": name}
        description = fn.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _bad("must be a string", f"{where}.function.description")
            if description:
                converted["description"] = description
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad("must be a JSON schema object", f"{where}.function.parameters")
        converted["input_schema"] = params if params is not None else dict(_EMPTY_SCHEMA)
        if fn.get("strict") is True:
            converted["strict"] = True
        out.append(converted)
    if out:
        body["tools"] = out
    choice = _tool_choice(payload.get("tool_choice"), bool(out))
    parallel = payload.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if parallel is False and out:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        body["tool_choice"] = choice


def _tool_choice(choice: Any, have_tools: bool) -> dict[str, Any] | None:
    if choice is None or (choice == "none" and not have_tools):
        return None
    if not have_tools:
        raise _bad("tool_choice is only allowed when tools are specified", "tool_choice")
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str):
        if choice not in simple:
            raise _bad("tool_choice must be auto, none, required or a function", "tool_choice")
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise _bad("a named tool_choice needs function.name", "tool_choice.function.name")
        return {"type": "tool", "name": name}
    raise _bad("only function tool choices are supported", "tool_choice")


# ---------------------------------------------------------------- content


def _cache_control(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """Keep an Anthropic ``cache_control`` mark a client put on a part."""
    cc = part.get("cache_control")
    if isinstance(cc, dict):
        block["cache_control"] = cc
    return block


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    where = f"{where}.image_url.url"
    if not isinstance(url, str) or not url:
        raise _bad("image_url needs a url", where)
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise _bad("an image data URL must be data:image/<type>;base64,<data>", where)
        media_type = match.group(1).lower()
        if media_type == "image/jpg":
            media_type = "image/jpeg"
        if media_type not in _IMAGE_TYPES:
            raise _bad(f"unsupported image type {media_type}; use jpeg, png, gif or webp", where)
        if not match.group(2):
            raise _bad("the image data URL has no data", where)
        source = {"type": "base64", "media_type": media_type, "data": match.group(2)}
    elif url.lower().startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise _bad("image_url.url must be an http(s) URL or a base64 data URL", where)
    return _cache_control(part, {"type": "image", "source": source})


def _parts(
    content: Any, where: str, *, images: bool, refusal: bool = False
) -> list[dict[str, Any]]:
    """Content parts -> Anthropic blocks. Empty text parts are dropped (Anthropic
    rejects empty text blocks; they carry nothing)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content parts", f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype in ("text", "refusal"):
            assert isinstance(part, dict)
            text = part.get(ptype)
            if not isinstance(text, str):
                raise _bad(f"a {ptype} part needs a string {ptype}", f"{at}.{ptype}")
            if ptype == "refusal" and not refusal:
                raise _bad("refusal parts are only allowed in assistant messages", at)
            if text:
                blocks.append(_cache_control(part, {"type": "text", "text": text}))
        elif ptype == "image_url" and images:
            assert isinstance(part, dict)
            blocks.append(_image(part, at))
        else:
            raise _bad(f"content part type {ptype!r} is not supported here", f"{at}.type")
    return blocks


def _arguments(call: dict[str, Any], where: str) -> dict[str, Any]:
    fn = call.get("function")
    raw = fn.get("arguments") if isinstance(fn, dict) else None
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise _bad("function.arguments must be a JSON string", f"{where}.function.arguments")
    if json_too_deep(raw.encode("utf-8", "surrogatepass")):
        raise _bad(
            f"function.arguments is nested too deeply (more than {MAX_JSON_DEPTH} levels)",
            f"{where}.function.arguments",
        )
    try:
        value = json.loads(raw)
    except ValueError:  # JSONDecodeError, or an integer past the digit limit
        raise _bad("function.arguments is not valid JSON", f"{where}.function.arguments") from None
    if not isinstance(value, dict):
        raise _bad("function.arguments must encode a JSON object", f"{where}.function.arguments")
    return value


def _assistant(msg: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    for key in ("audio", "function_call"):
        if msg.get(key) is not None:
            raise _bad(f"assistant {key} is not supported", f"{where}.{key}")
    content = msg.get("content")
    if content is None:
        blocks: list[dict[str, Any]] = []
    else:
        blocks = _parts(content, where, images=False, refusal=True)
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = msg.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _bad("tool_calls must be a list", f"{where}.tool_calls")
    for k, call in enumerate(calls or ()):
        at = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise _bad("only function tool calls are supported", f"{at}.type")
        call_id = call.get("id")
        fn = call.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise _bad("a tool call needs an id", f"{at}.id")
        if not isinstance(name, str) or not name:
            raise _bad("a tool call needs function.name", f"{at}.function.name")
        blocks.append(
            {"type": "tool_use", "id": call_id, "name": name, "input": _arguments(call, at)}
        )
    if isinstance(content, str) and len(blocks) <= 1 and not calls and not refusal:
        return content  # plain text stays a plain string, as the client sent it
    return blocks or ""


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad("a tool message needs tool_call_id", f"{where}.tool_call_id")
    content = msg.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        if content:
            result["content"] = content
    elif content is not None:
        blocks = _parts(content, where, images=True)
        if blocks:
            result["content"] = blocks
    return result


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _messages(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, Anthropic messages) for the OpenAI ``messages`` list."""
    if not isinstance(raw, list) or not raw:
        raise _bad("messages must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    after_tool = False  # the last Anthropic turn was built from tool messages
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad("each message must be an object", where)
        role = msg.get("role")
        if role in ("system", "developer"):
            if msg.get("content") is None:
                raise _bad(f"a {role} message needs content", f"{where}.content")
            system += _parts(msg["content"], where, images=False)
            continue
        if role == "user":
            if msg.get("content") is None:
                raise _bad("a user message needs content", f"{where}.content")
            content = msg["content"]
            user: str | list[dict[str, Any]] = (
                content if isinstance(content, str) else _parts(content, where, images=True)
            )
            if after_tool:
                out[-1]["content"] += _as_blocks(user)
            else:
                out.append({"role": "user", "content": user})
            after_tool = False
        elif role == "assistant":
            out.append({"role": "assistant", "content": _assistant(msg, where)})
            after_tool = False
        elif role == "tool":
            result = _tool_result(msg, where)
            if after_tool:
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
            after_tool = True
        elif role == "function":
            raise _bad("function messages are deprecated; use tool messages", f"{where}.role")
        else:
            raise _bad(
                "role must be one of system, developer, user, assistant or tool",
                f"{where}.role",
            )
    if not out:
        raise _bad("messages must contain at least one user or assistant message", "messages")
    return system, out


# ---------------------------------------------------------------- entry points


def to_anthropic(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat.completions request body -> an Anthropic Messages request body.

    Raises :class:`InvalidRequestError` (with ``param``) for anything invalid or
    untranslatable; see the module docstring for every parameter's treatment.
    """
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    _reject_unsupported(payload)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required", "model")
    system, messages = _messages(payload.get("messages"))
    body: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(payload)}
    if system:
        plain = len(system) == 1 and "cache_control" not in system[0]
        body["system"] = system[0]["text"] if plain else system
    body["messages"] = messages
    _sampling(payload, body)
    _tools(payload, body)
    _identity(payload, body)
    _response_format(payload, body)
    thinking = payload.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise _bad("thinking must be an object (Anthropic's shape)", "thinking")
        body["thinking"] = thinking
    _streaming(payload, body)
    return body
