"""The official OpenAI Python SDK, unmodified, against a live server on the embedded model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_model(client, model):
    assert model and client.models.retrieve(model).id == model


def test_chat_answers_paris(client, model):
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.system_fingerprint
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completions(client, model):
    r = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=5)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.completion_tokens <= 5


def test_streaming_chat_with_usage_matches_non_streaming(client, model):
    full = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_streaming_completions(client, model):
    chunks = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_2_returns_two_choices(client, model):
    r = client.chat.completions.create(model=model, messages=QUESTION, n=2, temperature=1.0, seed=7, max_tokens=12)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.message.content for c in r.choices)


def test_chat_logprobs(client, model):
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=6, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy picks the most likely token
        assert entry.logprob <= 0


def test_completions_logprobs(client, model):
    r = client.completions.create(model=model, prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_stop_string_is_excluded(client, model):
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=30, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client, model):
    def sample(seed):
        return client.chat.completions.create(model=model, messages=QUESTION, temperature=1.0, seed=seed,
                                              max_tokens=16).choices[0].message.content

    assert sample(11) == sample(11)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_max_tokens_gives_finish_reason_length(client, model):
    r = client.completions.create(model=model, prompt="Count: 1, 2, 3,", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_echo_prepends_the_prompt(client, model):
    r = client.completions.create(model=model, prompt="The sky is", max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text.startswith("The sky is") and len(r.choices[0].text) > len("The sky is")


def test_token_id_prompts_and_prompt_lists(client, model, live_server):
    import httpx

    def ids(text):
        return httpx.post(live_server.base_url + "/tokenize", json={"prompt": text}).json()["tokens"]

    by_ids = client.completions.create(model=model, prompt=ids("The sky is"), max_tokens=3, temperature=0)
    by_text = client.completions.create(model=model, prompt="The sky is", max_tokens=3, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    r = client.completions.create(model=model, prompt=[ids("The sky is"), ids("Paris is")], max_tokens=2,
                                  temperature=0, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == len(ids("The sky is")) + len(ids("Paris is"))
    texts = client.completions.create(model=model, prompt=["The sky is", "Paris is"], max_tokens=2, temperature=0)
    assert [c.index for c in texts.choices] == [0, 1]


def test_extension_params_min_tokens_and_ignore_eos(client, model):
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12,
                                       extra_body={"min_tokens": 12, "ignore_eos": True})
    assert r.usage.completion_tokens == 12
