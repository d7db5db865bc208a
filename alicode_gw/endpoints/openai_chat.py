"""``POST /v1/chat/completions``: the OpenAI surface over the same pipeline as
``/v1/messages`` (limits, key pool, billing). The pure translation lives in
:mod:`alicode_gw.openai.request`; this module adapts it to the relay."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from alicode_gw import pipeline
from alicode_gw.errors import GatewayError, error_for_status
from alicode_gw.ids import random_token
from alicode_gw.openai.request import stream_include_usage, to_anthropic
from alicode_gw.openai.response import StreamTranslator, to_openai
from alicode_gw.requestbody import read_json
from alicode_gw.state import RequestContext
from alicode_gw.upstream.client import Refusal
from alicode_gw.upstream.relay import StreamFormat
from alicode_gw.upstream.sse import SSEParser


class OpenAIStream:
    """Re-encodes an Anthropic SSE stream as ``chat.completion.chunk`` events."""

    def __init__(self, translator: StreamTranslator) -> None:
        self._parser = SSEParser()
        self._translator = translator

    def translate(self, chunk: bytes) -> bytes:
        feed = self._translator.feed
        return b"".join([feed(event) for event in self._parser.feed(chunk)])

    def finish(self) -> bytes:
        return self._translator.finish()

    def error(self, err: GatewayError, request_id: str) -> bytes:
        return self._translator.error_chunk(err)


class OpenAISurface:
    def __init__(self, include_usage: bool) -> None:
        self.completion_id = "chatcmpl-" + random_token(29)
        self.created = int(time.time())
        self.include_usage = include_usage

    def json_body(self, raw: bytes, model: str) -> bytes:
        message = json.loads(raw)
        answer = to_openai(
            message,
            completion_id=self.completion_id,
            created=self.created,
            model=message.get("model", model),
        )
        return json.dumps(answer, separators=(",", ":")).encode()

    def stream_format(self, model: str) -> StreamFormat:
        return OpenAIStream(
            StreamTranslator(
                completion_id=self.completion_id,
                created=self.created,
                model=model,
                include_usage=self.include_usage,
            )
        )

    def refusal(self, refusal: Refusal, ctx: RequestContext) -> web.StreamResponse:
        """An upstream client error, re-raised so it renders in OpenAI's shape."""
        message = "The upstream API refused the request."
        try:
            body: Any = json.loads(refusal.body)
            message = str(body["error"]["message"])
        except (ValueError, KeyError, TypeError):
            pass
        raise error_for_status(refusal.status, message, headers=refusal.headers)


async def handle_chat_completions(ctx: RequestContext) -> web.StreamResponse:
    limit = ctx.state.config.max_body_bytes
    # No local of this frame keeps the request: the pipeline lets go of it (pipeline.serve).
    return await pipeline.serve(ctx, *_anthropic_request(ctx, await read_json(ctx.request, limit)))


def _anthropic_request(
    ctx: RequestContext, read: tuple[bytes, dict[str, Any]]
) -> tuple[bytes, dict[str, Any], OpenAISurface]:
    """The Messages request the chat completion ``read`` (its body and decoded form)
    becomes, and the surface that answers it in OpenAI's shape."""
    payload = read[1]
    pipeline.note_model(ctx, payload)  # logged even when the translation refuses it
    translated = to_anthropic(payload)
    body = json.dumps(translated, separators=(",", ":")).encode()
    return body, translated, OpenAISurface(stream_include_usage(payload))
