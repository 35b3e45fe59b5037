"""Engine behaviour a user notices: stops, n > 1, aborts, seeds, failures, timings."""

from __future__ import annotations

import pytest

from servewise.types import FinishReason, SamplingParams
from tests.engine.conftest import make_engine
from tests.engine.utils import prompt, run


@pytest.fixture()
def engine(tiny_dirs):
    return make_engine(tiny_dirs["llama"], backend="auto")


def test_stop_string_ends_the_text_before_it(engine):
    free = run(engine, {"a": (prompt(engine), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))})["a"]
    text = free.text
    assert len(text) > 6
    stop = text[3:6]  # a stop string that most likely spans a token boundary
    r = run(engine, {"b": (prompt(engine), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True,
                                                          stop=(stop,)))})["b"]
    assert r.text == text[: text.find(stop)]
    assert r.outputs[0].finish_reason is FinishReason.STOP and r.outputs[0].stop_reason == stop


def test_streamed_pieces_join_to_the_full_decode(engine):
    r = run(engine, {"a": (prompt(engine), SamplingParams(max_tokens=40, temperature=1.0, seed=1,
                                                          ignore_eos=True))})["a"]
    # a random model emits arbitrary bytes: the pieces still join to exactly the full decode
    assert r.text == engine.tokenizer.decode(r.outputs[0].token_ids)


def test_max_tokens_and_stop_token_ids(engine):
    free = run(engine, {"a": (prompt(engine), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))})["a"]
    assert len(free.outputs[0].token_ids) == 8 and free.outputs[0].finish_reason is FinishReason.LENGTH
    stop_id = free.outputs[0].token_ids[3]
    r = run(engine, {"b": (prompt(engine), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                                                          stop_token_ids=(stop_id,)))})["b"]
    first = free.outputs[0].token_ids.index(stop_id)
    assert r.outputs[0].token_ids == free.outputs[0].token_ids[: first + 1]
    assert r.outputs[0].stop_reason == stop_id


def test_n_siblings_share_the_prompt_blocks(engine):
    long_prompt = prompt(engine, "a fairly long shared prompt " * 8)
    r = run(engine, {"g": (long_prompt, SamplingParams(n=4, max_tokens=6, temperature=1.0, seed=3))})["g"]
    assert [c.index for c in r.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 6 for c in r.outputs)
    assert len({tuple(c.token_ids) for c in r.outputs}) > 1  # they sample independently
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


def test_seeded_sampling_is_reproducible_whatever_the_batch(engine):
    params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=1234, ignore_eos=True)
    alone = run(engine, {"a": (prompt(engine), params)})["a"].outputs[0].token_ids
    crowd = {f"x{i}": (prompt(engine, f"other prompt {i}"), SamplingParams(max_tokens=12, temperature=1.0))
             for i in range(6)}
    crowd["a"] = (prompt(engine), params)
    assert run(engine, crowd)["a"].outputs[0].token_ids == alone


def test_abort_frees_blocks_at_once(engine):
    engine.add_request("a", prompt(engine), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.kv_cache.num_free_blocks < engine.kv_cache.num_blocks
    engine.abort_request("a")
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    outs = engine.step()
    assert outs[0].finished and outs[0].outputs[0].finish_reason is FinishReason.ABORT
    assert not engine.has_unfinished_requests


def test_a_failing_request_fails_alone(engine, monkeypatch):
    real = engine.sampler.sample

    def flaky(logits, requests):
        if any(r.params.seed == 666 for r in requests):
            raise RuntimeError("injected sampling failure")
        return real(logits, requests)

    monkeypatch.setattr(engine.sampler, "sample", flaky)
    results = run(engine, {
        "bad": (prompt(engine), SamplingParams(max_tokens=5, seed=666)),
        "good": (prompt(engine, "another one"), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)),
    })
    assert results["bad"].outputs[0].finish_reason is FinishReason.ERROR and results["bad"].error
    assert len(results["good"].outputs[0].token_ids) == 5
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


def test_timings_are_ordered_and_compute_is_attributed(engine):
    r = run(engine, {"a": (prompt(engine), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))})["a"]
    t = r.timings
    assert t.arrival_s <= t.first_scheduled_s <= t.first_token_s <= t.last_token_s <= t.finished_s
    assert len(r.outputs[0].token_times_s) == 5
    assert t.prefill_compute_s > 0 and t.decode_compute_s > 0
    busy = engine.stats.busy_s
    assert t.prefill_compute_s + t.decode_compute_s == pytest.approx(busy, rel=0.01)


def test_context_length_errors_name_both_numbers(engine):
    from servewise.errors import ContextLengthError

    with pytest.raises(ContextLengthError, match=r"1024.*1000 prompt tokens \+ 100"):
        engine.add_request("x", [5] * 1000, SamplingParams(max_tokens=100))
