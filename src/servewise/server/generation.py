"""Running one validated request in the engine and shaping its outputs as OpenAI responses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from servewise.engine.results import GenerationResult, ResultBuilder
from servewise.errors import EngineError, ServeWiseError
from servewise.server.responses import (
    FINISH_REASONS,
    ChoiceState,
    LogprobFormatter,
    Usage,
    chat_response,
    completion_response,
    error_body,
    finish_reason,
    sse,
)
from servewise.server.tool_calls import ToolCallParser, delta
from servewise.server.validation import ValidGeneration
from servewise.types import FinishReason, RequestOutput

DONE = sse("[DONE]")
# Opens one engine request's output stream: (engine request id, prompt token ids) -> its outputs,
# once the request is accepted (a fleet replica's admission answers before any byte is sent).
OpenStream = Callable[[str, tuple[int, ...]], Awaitable[AsyncGenerator[RequestOutput, None]]]


class Generation:
    """A request's prompts running in the engine; keeps every output so usage and logs can be derived."""

    def __init__(self, open_stream: OpenStream, valid: ValidGeneration, request_id: str, arrival_s: float,
                 engine_ids: list[str], decode: Callable[[list[int]], str],
                 on_first_token: Callable[[float], None] | None = None) -> None:
        self.open_stream = open_stream
        self.valid = valid
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.engine_ids = engine_ids  # one unique engine request id per prompt
        self.decode = decode  # token ids -> text (echo of a token-id prompt)
        self.on_first_token = on_first_token  # called once with the TTFT in seconds
        self.first_token_s: float | None = None  # monotonic time the first token reached the server
        self._streams: list[AsyncGenerator[RequestOutput, None]] = []
        n = valid.params.n
        self.builders = [ResultBuilder(rid, n) for rid in engine_ids]
        self.choices = [ChoiceState(i) for i in range(len(valid.prompts) * n)]

    @property
    def results(self) -> list[GenerationResult]:
        return [b.result for b in self.builders]

    def usage(self) -> Usage:
        results = self.results
        return Usage(prompt_tokens=sum(len(p) for p in self.valid.prompts),
                     completion_tokens=sum(r.num_output_tokens for r in results),
                     cached_tokens=sum(r.num_cached_tokens for r in results))

    def finish_reasons(self) -> list[str]:
        """Per choice, as the OpenAI API spells them."""
        return [FINISH_REASONS[c.finish_reason] if c.finish_reason else "abort" for c in self.choices]

    def engine_finish_reasons(self) -> list[str]:
        """Per choice, the engine's own reason (stop, length, abort, error, drain): metrics and logs."""
        return [c.finish_reason.value if c.finish_reason else "abort" for c in self.choices]

    async def start(self) -> None:
        """Open every prompt's stream; a refusal downstream (429, 503) raises here, before any byte."""
        opened = await asyncio.gather(*(self.open_stream(eid, p) for eid, p in zip(self.engine_ids, self.valid.prompts,
                                                                                   strict=True)),
                                      return_exceptions=True)
        self._streams = [s for s in opened if not isinstance(s, BaseException)]
        failed = [s for s in opened if isinstance(s, BaseException)]
        if failed:
            await self.aclose()
            raise failed[0]

    async def aclose(self) -> None:
        """Leave every stream (aborting what is still running); idempotent."""
        for stream in self._streams:
            await stream.aclose()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) as they come; several prompts are interleaved."""
        if len(self.engine_ids) == 1:
            async for out in self._one(0):
                yield 0, out
            return
        merged: asyncio.Queue[tuple[int, RequestOutput] | BaseException | None] = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for out in self._one(i):
                    merged.put_nowait((i, out))
            except BaseException as exc:  # forwarded to the consumer, which re-raises it
                merged.put_nowait(exc)
            finally:
                merged.put_nowait(None)

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self.engine_ids))]
        try:
            remaining = len(tasks)
            while remaining:
                item = await merged.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _one(self, i: int) -> AsyncIterator[RequestOutput]:
        async for out in self._streams[i]:
            self.builders[i].add(out)
            if self.first_token_s is None and any(c.token_ids for c in out.outputs):
                self.first_token_s = time.monotonic()
                if self.on_first_token is not None:
                    self.on_first_token(self.first_token_s - self.arrival_s)
            n = self.valid.params.n
            for c in out.outputs:
                choice = self.choices[i * n + c.index]
                choice.text += c.text
                choice.num_tokens += len(c.token_ids)
                if c.logprobs:
                    choice.logprobs.extend(c.logprobs)
                if c.finish_reason is not None:
                    choice.finish_reason = c.finish_reason
            yield out


def _raise_if_failed(out: RequestOutput) -> None:
    if out.error or any(c.finish_reason is FinishReason.ERROR for c in out.outputs):
        raise EngineError(out.error or "the engine failed this request")


async def full_response(gen: Generation, created: int, fingerprint: str, formatter: LogprobFormatter | None
                        ) -> dict[str, Any]:
    async for _, out in gen.outputs():
        _raise_if_failed(out)
    valid = gen.valid
    if valid.kind == "chat":
        return chat_response(f"chatcmpl-{gen.request_id}", created, valid.model, fingerprint, gen.choices,
                             gen.usage(), formatter, valid.tools.syntax if valid.tools else None)
    if valid.echo:
        n = valid.params.n
        for choice in gen.choices:
            choice.text = _prompt_text(gen, choice.index // n) + choice.text
    return completion_response(f"cmpl-{gen.request_id}", created, valid.model, fingerprint, gen.choices,
                               gen.usage(), formatter)


def _prompt_text(gen: Generation, prompt_index: int) -> str:
    text = gen.valid.prompt_texts[prompt_index]
    if text is None:
        text = gen.decode(list(gen.valid.prompts[prompt_index]))
    return text


async def stream_response(gen: Generation, created: int, fingerprint: str, formatter: LogprobFormatter | None
                          ) -> AsyncIterator[bytes]:
    """SSE chunks: (chat) the role first, content deltas, a finish chunk per choice, usage, [DONE]."""
    valid = gen.valid
    chat = valid.kind == "chat"
    base: dict[str, Any] = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{gen.request_id}",
                            "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": created, "model": valid.model, "system_fingerprint": fingerprint}
    if valid.include_usage:
        base["usage"] = None
    n = valid.params.n
    offsets = [0] * len(gen.choices)  # completions logprobs text_offset per choice

    # The hot path (a content delta, no logprobs, not finished) splices the text into a
    # pre-serialised chunk: one json.dumps of a string instead of a whole dict per token.
    head = json.dumps({**base, "choices": None}, separators=(",", ":"), ensure_ascii=False)[:-len('"choices":null}')]
    content_key = '"delta":{"content":' if chat else '"text":'
    content_tail = "}" if chat else ""

    def chunk(index: int, text: str, logprobs: Any, finish: str | None, role: bool = False) -> bytes:
        if logprobs is None and finish is None and not role and text:
            return (f'data: {head}"choices":[{{"index":{index},{content_key}{json.dumps(text, ensure_ascii=False)}'
                    f'{content_tail},"logprobs":null,"finish_reason":null}}]}}\n\n').encode()
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if role else (
                {"content": text} if text or logprobs else {})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    def tool_chunks(choice: ChoiceState, text: str, logprobs: Any, final: bool) -> list[bytes]:
        parser = choice.tool_parser
        assert parser is not None
        events = parser.feed(text) + (parser.finish() if final else [])
        chunks = [sse({**base, "choices": [{"index": choice.index, "delta": delta(e), "logprobs": None,
                                            "finish_reason": None}]}) for e in events]
        if logprobs is not None:  # token logprobs do not split along calls: sent on their own
            chunks.append(chunk(choice.index, "", logprobs, None))
        return chunks

    try:
        for choice in gen.choices:
            if chat:
                yield chunk(choice.index, "", None, None, role=True)
                if valid.tools is not None:
                    choice.tool_parser = ToolCallParser(valid.tools.syntax)
            elif valid.echo:
                yield chunk(choice.index, _prompt_text(gen, choice.index // n), None, None)
        async for prompt_index, out in gen.outputs():
            _raise_if_failed(out)
            for c in out.outputs:
                index = prompt_index * n + c.index
                logprobs = None
                if formatter is not None and c.logprobs:
                    if chat:
                        logprobs = {"content": formatter.chat(c.logprobs)}
                    else:
                        logprobs, offsets[index] = formatter.completion(c.logprobs, offsets[index])
                parser = gen.choices[index].tool_parser
                if parser is not None:
                    for data in tool_chunks(gen.choices[index], c.text, logprobs, c.finish_reason is not None):
                        yield data
                elif c.text or logprobs is not None:
                    yield chunk(index, c.text, logprobs, None)
                if c.finish_reason is not None:
                    yield chunk(index, "", None, finish_reason(c.finish_reason, parser.call_count if parser else 0))
        if valid.include_usage:
            yield sse({**base, "choices": [], "usage": gen.usage().as_dict()})
    except ServeWiseError as exc:  # the engine failed this request, or died: tell the client in-band
        yield sse(error_body(exc.message, exc.openai_type, code=exc.error_type))
    yield DONE
