"""Grammar-constrained decoding in the engine, on a tiny random checkpoint (the grammar, not the model,
decides whether the output is valid, so a random model is the harder test)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from servewise.config import StructuredOutputConfig
from servewise.engine.sampler import Sampler
from servewise.engine.structured import GrammarCompiler, GrammarState, choice_ebnf, unpack_bitmask
from servewise.errors import InvalidRequestError
from servewise.types import FinishReason, GrammarKind, GrammarSpec, SamplingParams
from tests.engine.conftest import make_engine
from tests.engine.utils import create_request, prompt, run

SCHEMA = {"type": "object", "properties": {
    "word": {"type": "string", "minLength": 3, "maxLength": 12, "pattern": "^[a-z]+$"},
    "n": {"type": "integer", "minimum": 0, "maximum": 999},
    "tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 3}},
    "required": ["word", "n", "tags"], "additionalProperties": False}


def spec(kind: GrammarKind, value: object) -> GrammarSpec:
    return GrammarSpec(kind, value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))


@pytest.fixture(scope="module")
def engine(tiny_dirs):
    return make_engine(tiny_dirs["llama"], backend="auto")


def test_json_schema_output_validates_greedy_and_sampled_with_n(engine):
    s = spec(GrammarKind.JSON_SCHEMA, SCHEMA)
    results = run(engine, {"g": (prompt(engine), SamplingParams(max_tokens=200, temperature=0, grammar=s)),
                           "s": (prompt(engine), SamplingParams(n=3, max_tokens=200, temperature=1.0, seed=4,
                                                                grammar=s))})
    outputs = results["g"].outputs + results["s"].outputs
    for out in outputs:
        jsonschema.validate(json.loads(out.text), SCHEMA)
        assert out.finish_reason is FinishReason.STOP
        assert not set(out.token_ids) & engine.eos_token_ids  # finished on completion, no eos step
    assert len({o.text for o in results["s"].outputs}) > 1  # siblings have matchers of their own
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


def test_regex_choice_and_grammar(engine):
    choices = ["red", 'say "hi"', "日本"]
    results = run(engine, {
        "re": (prompt(engine), SamplingParams(max_tokens=40, temperature=1.0, seed=1,
                                              grammar=spec(GrammarKind.REGEX, r"[0-9]{3}-[a-f]{2}"))),
        "choice": (prompt(engine), SamplingParams(n=4, max_tokens=20, temperature=1.0, seed=2,
                                                  grammar=spec(GrammarKind.CHOICE, choices))),
        "ebnf": (prompt(engine), SamplingParams(max_tokens=40, temperature=1.0, seed=3,
                                                grammar=spec(GrammarKind.EBNF, 'root ::= "(" [a-z]+ ")"'))),
    })
    assert re.fullmatch(r"[0-9]{3}-[a-f]{2}", results["re"].text)
    assert all(o.text in choices for o in results["choice"].outputs)
    ebnf = results["ebnf"].outputs[0]
    assert re.fullmatch(r"\([a-z]+\)", ebnf.text) or ebnf.finish_reason is FinishReason.LENGTH


def test_max_tokens_cut_gives_length(engine):
    s = spec(GrammarKind.REGEX, "[a-z]{30,40}")
    r = run(engine, {"a": (prompt(engine), SamplingParams(max_tokens=3, temperature=0, grammar=s))})["a"]
    assert r.outputs[0].finish_reason is FinishReason.LENGTH and len(r.outputs[0].token_ids) == 3


def test_seeded_constrained_sampling_ignores_the_batch(engine):
    params = SamplingParams(max_tokens=60, temperature=0.9, seed=77, grammar=spec(GrammarKind.JSON_SCHEMA, SCHEMA))
    alone = run(engine, {"a": (prompt(engine), params)})["a"].outputs[0].token_ids
    crowd = {f"x{i}": (prompt(engine, f"other {i}"), SamplingParams(max_tokens=30, temperature=1.0)) for i in range(5)}
    crowd["a"] = (prompt(engine), params)
    assert run(engine, crowd)["a"].outputs[0].token_ids == alone


def test_unconstrained_rows_of_a_mixed_batch_are_untouched():
    torch.manual_seed(0)
    logits = torch.randn(3, 384)
    engine_free = create_request(params=SamplingParams(temperature=0))
    constrained = create_request(params=SamplingParams(temperature=0))
    compiler = _compiler()
    constrained.grammar = GrammarState(compiler.compile(spec(GrammarKind.CHOICE, ["ab"])).compiled, [1])
    out = Sampler().sample(logits.clone(), [engine_free, constrained, engine_free])
    assert [out.token_ids[0], out.token_ids[2]] == [int(logits[0].argmax()), int(logits[2].argmax())]
    mask = torch.zeros(1, 12, dtype=torch.int32)
    constrained.grammar.fill(mask, 0)
    assert unpack_bitmask(mask, 384)[0, out.token_ids[1]]  # the constrained row picked an allowed token


def test_preemption_mid_request_keeps_the_matcher_in_step_with_the_output(tiny_dirs):
    engine = make_engine(tiny_dirs["llama"], backend="auto", num_blocks=40, max_num_batched_tokens=64)
    long_word = {"type": "object", "properties": {"w": {"type": "string", "minLength": 40, "maxLength": 50,
                                                        "pattern": "^[a-z]+$"}},
                 "required": ["w"], "additionalProperties": False}
    s = spec(GrammarKind.JSON_SCHEMA, long_word)
    checked = []
    real = engine.sampler.sample

    def checking(logits, requests):
        for r in requests:
            if r.grammar is not None:
                checked.append(r.grammar.num_accepted_tokens == r.num_output_tokens)
        return real(logits, requests)

    engine.sampler.sample = checking
    requests = {f"r{i}": (prompt(engine, f"request number {i} asks for json"),
                          SamplingParams(max_tokens=80, temperature=1.0, seed=i, grammar=s)) for i in range(6)}
    results = run(engine, requests)
    assert engine.scheduler.num_preemptions > 0
    assert checked and all(checked)
    for r in results.values():
        jsonschema.validate(json.loads(r.text), long_word)


def test_sync_replays_the_output_when_the_matcher_drifted():
    compiled = _compiler().compile(spec(GrammarKind.REGEX, "[a-z]+")).compiled
    state = GrammarState(compiled, [1])
    ids = [next(t for t in range(5, 384) if state.accept(t))]
    state.matcher.reset()  # drift: the matcher forgot what the sequence already holds
    state.sync(ids)
    assert state.num_accepted_tokens == len(ids)


def test_compile_cache_errors_and_backend_choice():
    compiler = _compiler()
    s = spec(GrammarKind.JSON_SCHEMA, {"type": "integer"})
    assert not compiler.compile(s).cache_hit and compiler.compile(s).cache_hit
    with pytest.raises(InvalidRequestError, match="Unsupported type"):
        compiler.compile(spec(GrammarKind.JSON_SCHEMA, {"type": "strin"}))
    with pytest.raises(InvalidRequestError, match="uniqueItems"):
        compiler.compile(spec(GrammarKind.JSON_SCHEMA, {"type": "array", "uniqueItems": True}))
    with pytest.raises(InvalidRequestError, match="regex"):
        compiler.compile(spec(GrammarKind.REGEX, "[a-"))
    both = {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}
    assert compiler.compile(spec(GrammarKind.JSON_SCHEMA, both)).compiled.backend == "llguidance"
    assert compiler.compile(s).compiled.backend == "xgrammar"
    assert compiler.num_cached == 2  # failures are not cached


def test_special_tokens_are_never_spelled_by_a_grammar():
    compiled = _compiler().compile(spec(GrammarKind.REGEX, "(.|\n)*")).compiled
    mask = torch.zeros(1, 12, dtype=torch.int32)
    GrammarState(compiled, [1]).fill(mask, 0)
    allowed = unpack_bitmask(mask, 384)[0]
    assert not allowed[[0, 2, 3, 4]].any() and allowed[1]  # specials masked; the stop token allowed
    assert allowed[5:].sum() > 300


def test_choice_ebnf_escapes_quotes_and_backslashes():
    assert choice_ebnf(['a"b', "c\\d", "x\ny"]) == 'root ::= "a\\"b" | "c\\\\d" | "x\\u000ay"'


def _compiler() -> GrammarCompiler:
    from tests.factories import SPECIAL_TOKENS, train_tiny_tokenizer

    backend = train_tiny_tokenizer()

    class Vocab:
        vocab_size = backend.get_vocab_size()
        special_token_ids = frozenset(range(len(SPECIAL_TOKENS)))
        bos_token_id = 0

        @staticmethod
        def token_bytes(i: int) -> bytes:
            from servewise.loading.tokenizer import _UNICODE_TO_BYTE

            return bytes(_UNICODE_TO_BYTE[c] for c in backend.id_to_token(i))

        @staticmethod
        def encode(text: str, add_special_tokens: bool = False) -> list[int]:
            return backend.encode(text, add_special_tokens=False).ids

    return GrammarCompiler(Vocab(), 384, [1], StructuredOutputConfig())
