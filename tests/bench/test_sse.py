from servewise.bench.sse import SseDecoder, SseEvent, StreamState, error_text


def test_events_survive_any_chunking():
    body = (b'data: {"a": 1}\n\n: keep-alive comment\n\nevent: error\ndata: {"error": {"message": "boom"}}\n\n'
            b"data: line one\r\ndata: line two\r\n\r\ndata: [DONE]\n\n")
    expected = [SseEvent(None, b'{"a": 1}'), SseEvent("error", b'{"error": {"message": "boom"}}'),
                SseEvent(None, b"line one\nline two"), SseEvent(None, b"[DONE]")]
    for size in (1, 2, 7, len(body)):
        decoder = SseDecoder()
        events = [e for i in range(0, len(body), size) for e in decoder.feed(body[i:i + size])]
        assert events + decoder.flush() == expected


def test_flush_dispatches_a_last_event_without_its_blank_line():
    decoder = SseDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.flush() == [SseEvent(None, b"[DONE]")]


def _chat_chunk(content=None, finish=None, usage=None):
    import json

    delta = {} if content is None else {"content": content}
    payload = {"choices": [{"delta": delta, "finish_reason": finish}] if usage is None else []}
    if usage is not None:
        payload["usage"] = usage
    return SseEvent(None, json.dumps(payload).encode())


def test_stream_state_times_only_non_empty_content_and_reads_usage():
    state = StreamState()
    state.take(_chat_chunk(""), 0.01)  # the role chunk: no token
    state.take(_chat_chunk("Hel"), 0.05)
    state.take(_chat_chunk("lo"), 0.07)
    state.take(_chat_chunk(finish="stop"), 0.08)
    state.take(_chat_chunk(usage={"prompt_tokens": 5, "completion_tokens": 3}), 0.08)
    assert state.token_times_s == [0.05, 0.07]
    assert (state.prompt_tokens, state.completion_tokens) == (5, 3) and state.cached_tokens is None
    assert state.completed and not state.saw_done
    state.take(SseEvent(None, b"[DONE]"), 0.09)
    assert state.saw_done and state.last_event_s == 0.09 and state.error is None


def test_stream_state_reads_cached_prompt_tokens_when_the_server_reports_them():
    state = StreamState()
    state.take(_chat_chunk(usage={"prompt_tokens": 1040, "completion_tokens": 3,
                                  "prompt_tokens_details": {"cached_tokens": 1008}}), 0.1)
    assert state.cached_tokens == 1008


def test_completions_text_chunks_count_as_tokens():
    state = StreamState()
    state.take(SseEvent(None, b'{"choices": [{"text": " a", "finish_reason": null}]}'), 0.1)
    state.take(SseEvent(None, b'{"choices": [{"text": "", "finish_reason": "length"}]}'), 0.2)
    assert state.token_times_s == [0.1] and state.completed


def test_errors_inside_the_stream_are_caught_as_event_body_or_garbage():
    for event in (SseEvent("error", b'{"message": "overloaded"}'),
                  SseEvent(None, b'{"error": {"message": "engine died"}}'),
                  SseEvent(None, b"not json")):
        state = StreamState()
        state.take(event, 0.1)
        assert state.error


def test_error_text_reads_openai_error_bodies():
    assert error_text(b'{"error": {"message": "slow down", "type": "rate_limit_error"}}') == "slow down"
    assert error_text("plain text\n") == "plain text"
    assert error_text({"detail": "x"}) == "{'detail': 'x'}"
