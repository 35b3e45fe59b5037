"""n-gram speculative decoding: proposals, the auto-off rule, verification (rejection sampling), and the
engine with it on: the same tokens as with it off, stops inside accepted runs, preemption, grammars."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import jsonschema
import pytest
import torch

from servewise.config import ConfigError, SpeculativeConfig
from servewise.engine.model_runner import RunnerOutput
from servewise.engine.sampler import Sampler, accept_longest_prefix
from servewise.engine.scheduler import ScheduleOutput
from servewise.engine.speculative import (
    DecodeStepCosts,
    NgramIndex,
    NgramSpeculator,
    can_speculate,
    draft_length,
    expected_tokens,
    max_draft_tokens,
)
from servewise.slo.cost_model import CostModelConfig, StepCost, StepCostModel
from servewise.types import FinishReason, GrammarKind, GrammarSpec, SamplingParams
from tests.engine.conftest import make_engine
from tests.engine.utils import create_request, prompt, run
from tests.slo.factories import FakeStep

SPEC = SpeculativeConfig(num_speculative_tokens=4)


class FreeDraftSpeculator(NgramSpeculator):
    """Draft tokens cost nothing here, whatever the steps took: drafting depends on acceptance and the
    batch cap only, not on how fast this (shared) machine happens to run the tiny model."""

    def __init__(self, config: SpeculativeConfig) -> None:
        super().__init__(config, StepCostModel(CostModelConfig(prior_step_overhead_s=0.01,
                                                               prior_decode_s_per_token=0.0)))

    def observe_step(self, step) -> None:
        pass


def make_spec_engine(path, *, k: int = 4, max_num_running: int = 4, **kwargs):
    engine = make_engine(path, speculative=SpeculativeConfig(num_speculative_tokens=k), **kwargs)
    engine.speculator = FreeDraftSpeculator(SpeculativeConfig(num_speculative_tokens=k,
                                                              max_num_running=max_num_running))
    return engine
COPY_TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. "


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: p = 0.001)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(observed: Counter[Any], expected: dict[Any, float]) -> tuple[float, int]:
    """Statistic and degrees of freedom, pooling categories expected fewer than 5 times."""
    stat, pooled_obs, pooled_exp, df = 0.0, 0, 0.0, -1
    for token, e in expected.items():
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + observed[token], pooled_exp + e
            continue
        stat, df = stat + (observed[token] - e) ** 2 / e, df + 1
    if pooled_exp > 0:
        stat, df = stat + (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9), df + 1
    return stat, max(df, 1)


# ---- proposals -----------------------------------------------------------------------------------

def reference_proposal(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    last = len(tokens) - 1
    for n in range(max_n, min_n - 1, -1):
        suffix = tokens[last - n + 1:] if n <= last else None
        for end in range(last - 1, n - 2, -1):  # latest earlier occurrence first
            if suffix is not None and tokens[end - n + 1:end + 1] == suffix:
                return tokens[end + 1:end + 1 + k]
    return []


def test_ngram_index_proposes_what_a_scan_finds_as_the_sequence_grows():
    rng = random.Random(0)
    for trial in range(30):
        tokens = [rng.randrange(4) for _ in range(3)]
        index = NgramIndex(1, 3)
        for _ in range(60):
            draft, n = index.propose(tokens, 4)
            assert draft == reference_proposal(tokens, 4, 1, 3), (trial, tokens)
            assert (n == 0) == (not draft) and (not draft or tokens[-n:] in [tokens[e - n + 1:e + 1] for e in
                                                                           range(n - 1, len(tokens) - 1)])
            tokens.append(rng.randrange(4 if trial % 2 else 40))


def test_the_longest_suffix_match_wins_and_its_latest_occurrence():
    index = NgramIndex(1, 3)
    #         a  b  c  d  x  b  c  y  a  b  c
    tokens = [1, 2, 3, 4, 9, 2, 3, 8, 1, 2, 3]
    assert index.propose(tokens, 3) == ([4, 9, 2], 3)  # "a b c" matched at the start (beats "b c" → y)
    assert NgramIndex(1, 2).propose(tokens, 2) == ([8, 1], 2)  # only 2-grams: the latest "b c" is followed by y
    assert NgramIndex(2, 3).propose([5, 6, 7], 3) == ([], 0)


# ---- the auto-off rule ---------------------------------------------------------------------------

CPU = StepCost(step_overhead_s=0.010, prefill_s_per_token=0.001, decode_s_per_token=0.004)


def test_expected_tokens_of_a_draft():
    assert expected_tokens(0.5, 0) == 1 and expected_tokens(0.5, 2) == 1.75 and expected_tokens(1.0, 4) == 5


def test_draft_length_rule():
    def cpu(t: int) -> float:
        return CPU.step_s(0, t)

    # one sequence, a step of 10 + 4 ms per decode token: 71 tok/s without a draft
    assert draft_length(0.9, 4, cpu, 1, 1, 1.05) == 4  # 4.1 tokens in 30 ms: 137 tok/s
    assert draft_length(0.5, 4, cpu, 1, 1, 1.05) == 1  # 1.5 tokens in 18 ms beats 1.75 in 22 ms
    assert draft_length(0.25, 4, cpu, 1, 1, 1.05) == 0  # 0.25 more tokens for 4 ms: not worth it
    assert draft_length(0.9, 2, cpu, 1, 1, 1.05) == 2  # max_tokens caps it
    assert draft_length(0.9, 4, lambda t: 0.0, 1, 1, 1.05) == 0  # no step time known: no draft, no crash
    # more sequences: extra rows slow them all, one gains: shorter drafts, then none
    assert draft_length(0.9, 4, cpu, 8, 8, 1.05) == 2
    assert draft_length(0.9, 4, cpu, 16, 16, 1.05) == 0
    # extra rows nearly free (weights read once per step): longer drafts pay at a lower acceptance
    cheap_rows = StepCost(step_overhead_s=0.012, prefill_s_per_token=0.001, decode_s_per_token=0.0005)
    assert draft_length(0.5, 4, lambda t: cheap_rows.step_s(0, t), 1, 1, 1.05) == 3
    assert draft_length(0.9, 4, lambda t: cheap_rows.step_s(0, t), 8, 8, 1.05) == 4
    # a kernel that takes rows in pairs (measured on a 2-core EPYC): drafts fill the pair
    pairs = {1: 9.3, 2: 11.0, 3: 16.2, 4: 19.5, 5: 24.9}
    assert draft_length(0.8, 4, lambda t: pairs[t] / 1e3, 1, 1, 1.05) == 1
    assert draft_length(0.95, 4, lambda t: pairs[t] / 1e3, 1, 1, 1.05) == 3
    with pytest.raises(ConfigError):
        SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=3, prompt_lookup_max=2)


def test_decode_step_costs_are_measured_by_size():
    model = StepCostModel(CostModelConfig(prior_step_overhead_s=0.010, prior_decode_s_per_token=0.004))
    costs = DecodeStepCosts(model)
    assert costs.step_s(3) == pytest.approx(0.022)  # nothing measured: the fitted cost
    for i in range(20):
        costs.observe(FakeStep(0.009, 1, 0, 1, float(i)))
        costs.observe(FakeStep(0.011, 2, 0, 1, float(i)))
        costs.observe(FakeStep(0.500, 2, 1, 2, float(i)))  # a prefill step says nothing about decode rows
    assert costs.step_s(1) == pytest.approx(0.009) and costs.step_s(2) == pytest.approx(0.011)
    assert costs.step_s(4) == pytest.approx(0.011 + 2 * model.cost().decode_s_per_token)


def test_acceptance_decides_per_sequence_probes_and_new_ones_start_from_the_engine_rate():
    config = SpeculativeConfig(num_speculative_tokens=3, probe_interval_steps=4)
    speculator = NgramSpeculator(config, StepCostModel(CostModelConfig(
        prior_step_overhead_s=0.010, prior_decode_s_per_token=0.004)))
    repetitive = create_request([1, 2, 3, 1, 2, 3, 1, 2], params=SamplingParams(max_tokens=100))
    repetitive.num_computed_tokens = repetitive.num_tokens - 1
    speculator.propose([repetitive])
    assert repetitive.draft_token_ids == [3, 1]  # α starts at 0.6: 2 tokens are worth their rows
    for _ in range(4):  # its drafts keep being rejected
        speculator.observe(repetitive, 2, 0)
    drafted = []
    for _ in range(8):
        speculator.propose([repetitive])
        drafted.append(len(repetitive.draft_token_ids))
    assert drafted == [0, 0, 0, 0, 1, 0, 0, 0]  # a one-token probe every 4 steps
    newcomer = create_request([5, 6, 7, 5, 6, 7, 5, 6], params=SamplingParams(max_tokens=100))
    newcomer.num_computed_tokens = 7
    speculator.propose([newcomer])
    assert not newcomer.draft_token_ids  # the engine-wide rate fell too
    for _ in range(6):
        speculator.observe(newcomer, 2, 2)  # then its drafts are all accepted
    speculator.propose([newcomer])
    assert newcomer.draft_token_ids == [7, 5, 6]  # α near 1 now: the longest draft
    crowd = [create_request([5, 6, 5, 6], params=SamplingParams(max_tokens=100)) for _ in range(4)]
    for r in crowd:
        r.num_computed_tokens = 3
    speculator.propose([newcomer, *crowd])
    assert not any(r.draft_token_ids for r in [newcomer, *crowd])  # 5 running > max_num_running


def test_which_requests_may_draft_and_how_far():
    assert can_speculate(create_request(4, params=SamplingParams(logit_bias=((5, 1.0),), logprobs=2)))
    assert not can_speculate(create_request(4, params=SamplingParams(repetition_penalty=1.1)))
    assert not can_speculate(create_request(4, params=SamplingParams(presence_penalty=0.5)))
    assert not can_speculate(create_request(4, params=SamplingParams(min_tokens=3)))
    near_the_end = create_request(4, params=SamplingParams(max_tokens=3))
    near_the_end.append_token(9)
    assert max_draft_tokens(near_the_end, 4) == 1  # 2 tokens left to emit: 1 draft + 1 bonus
    assert max_draft_tokens(create_request(4, max_total_tokens=6), 4) == 1


# ---- verification --------------------------------------------------------------------------------

def test_accept_longest_prefix_consumes_targets_lazily():
    calls = []

    def target(j):
        calls.append(j)
        return [5, 6, 9, 8][j]

    assert accept_longest_prefix([5, 6, 7], target) == [5, 6, 9] and calls == [0, 1, 2]
    assert accept_longest_prefix([5, 6], lambda j: [5, 6, 4][j]) == [5, 6, 4]  # all accepted, + bonus
    assert accept_longest_prefix([], lambda j: 3) == [3]


def test_rejection_sampling_keeps_the_target_distribution():
    vocab = 6
    logits = torch.tensor([[1.0, 0.2, -0.5, 0.7, 0.0, -1.0],
                           [0.3, 1.2, 0.1, -0.2, 0.9, 0.0],
                           [0.0, 0.0, 0.5, 0.5, -0.5, 1.0]])
    p = torch.softmax(logits, dim=-1)
    draft = [3, 4]  # p0(3) ≈ 0.25, p1(4) ≈ 0.22
    sampler = Sampler()
    params = SamplingParams(temperature=1.0, max_tokens=100)
    first, second_after_accept, num_accepted = Counter(), Counter(), Counter()
    n = 6000
    for seed in range(n):
        tokens = [t for t, _ in sampler.verify(logits, create_request(4, params=params, seed=seed), draft)]
        first[tokens[0]] += 1
        if tokens[0] == draft[0]:
            second_after_accept[tokens[1]] += 1
        num_accepted[len(tokens) - 1] += 1
    stat, df = chi_square(first, {t: n * float(p[0, t]) for t in range(vocab)})
    assert stat < chi_square_critical(df)
    m = first[draft[0]]
    stat, df = chi_square(second_after_accept, {t: m * float(p[1, t]) for t in range(vocab)})
    assert stat < chi_square_critical(df)
    # accepted length: 0 w.p. 1 - p0(d0), 1 w.p. p0(d0)(1 - p1(d1)), 2 w.p. p0(d0) p1(d1)
    a0, a1 = float(p[0, 3]), float(p[1, 4])
    stat, df = chi_square(num_accepted, {0: n * (1 - a0), 1: n * a0 * (1 - a1), 2: n * a0 * a1})
    assert stat < chi_square_critical(df)


def test_a_seeded_verification_emits_what_plain_sampling_would():
    logits = torch.randn(5, 64, generator=torch.Generator().manual_seed(1)) * 2
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=3)
    plain = []
    request = create_request(4, params=params, seed=11)
    for j in range(5):
        plain.append(Sampler().sample(logits[j:j + 1], [request]).token_ids[0])
    draft = plain[:2] + [(plain[2] + 1) % 64, 0]  # accepted twice, then rejected
    verified = Sampler().verify(logits, create_request(4, params=params, seed=11), draft)
    assert [t for t, _ in verified] == plain[:3]


# ---- the engine with speculation on --------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_and_seeded_outputs_are_the_same_with_speculation_on(tiny_dirs, arch):
    requests = {f"copy{i}": (None, SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)) for i in range(2)}
    requests["seeded"] = (None, SamplingParams(max_tokens=48, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True))
    outputs = {}
    for name in ("off", "on"):
        engine = (make_spec_engine if name == "on" else make_engine)(tiny_dirs[arch], backend="auto")
        batch = {rid: (prompt(engine, COPY_TEXT * 2 + rid), params) for rid, (_, params) in requests.items()}
        outputs[name] = {rid: r.outputs[0].token_ids for rid, r in run(engine, batch).items()}
        assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    assert outputs["on"] == outputs["off"]
    assert engine.stats.num_drafts > 0 and 0 < engine.stats.num_accepted_tokens <= engine.stats.num_draft_tokens


def test_seeds_are_batch_invariant_with_speculation(tiny_dirs):
    # no prefix caching: a prompt read back from the fp16 KV cache is another (pre-existing) numerical path
    engine = make_spec_engine(tiny_dirs["llama"], backend="auto", prefix_caching=False)
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=99, ignore_eos=True)
    alone = run(engine, {"a": (prompt(engine, COPY_TEXT * 2), params)})["a"].outputs[0].token_ids
    drafts_alone = engine.stats.num_drafts
    crowd = {f"x{i}": (prompt(engine, f"other prompt {i}"), SamplingParams(max_tokens=24, temperature=1.0))
             for i in range(6)}  # 7 running: speculation is off for all of them
    crowd["a"] = (prompt(engine, COPY_TEXT * 2), params)
    assert run(engine, crowd)["a"].outputs[0].token_ids == alone
    assert drafts_alone > 0


class PatternRunner:
    """Stands in for the model: the token after position p is pattern[(p + 1) % len(pattern)], for sure."""

    def __init__(self, pattern: list[int], vocab_size: int) -> None:
        self.pattern, self.vocab_size = pattern, vocab_size

    def execute(self, sched: ScheduleOutput) -> RunnerOutput:
        rows, requests, drafts = [], [], []
        for chunk in sched.chunks:
            if not chunk.samples:
                continue
            last = chunk.request.num_computed_tokens + chunk.num_new_tokens - 1
            for position in range(last - len(chunk.draft_token_ids), last + 1):
                row = torch.zeros(self.vocab_size)
                row[self.pattern[(position + 1) % len(self.pattern)]] = 40.0
                rows.append(row)
            requests.append(chunk.request)
            drafts.append(chunk.draft_token_ids)
        return RunnerOutput(torch.stack(rows) if rows else torch.empty(0, self.vocab_size), requests, drafts)


class BigramRunner:
    """A small-vocabulary model: the logits after a token depend on that token only (6 tokens ever appear)."""

    TOKENS = [10, 11, 12, 13, 14, 15]

    def __init__(self, vocab_size: int) -> None:
        self.table = torch.full((vocab_size, vocab_size), -1e9)
        weights = torch.randn(len(self.TOKENS), len(self.TOKENS), generator=torch.Generator().manual_seed(5))
        for i, a in enumerate(self.TOKENS):
            self.table[a, self.TOKENS] = weights[i] * 1.5

    def probs_after(self, token: int) -> torch.Tensor:
        return torch.softmax(self.table[token], dim=-1)

    def execute(self, sched: ScheduleOutput) -> RunnerOutput:
        rows, requests, drafts = [], [], []
        for chunk in sched.chunks:
            if chunk.samples:
                rows.extend(self.table[t] for t in chunk.token_ids[-1 - len(chunk.draft_token_ids):])
                requests.append(chunk.request)
                drafts.append(chunk.draft_token_ids)
        return RunnerOutput(torch.stack(rows) if rows else torch.empty(0, self.table.shape[1]), requests, drafts)


def test_sampled_distribution_is_the_target_distribution_with_speculation_on(tiny_dirs):
    """Chi-square of the sampled (t1, t2, t3) against the small model's exact distribution; and with the same
    seeds, speculation on and off sample the same tokens (one uniform per emitted token either way)."""
    n = 1500
    outputs = {}
    for name in ("on", "off"):
        kwargs = {"backend": "fp32", "max_num_seqs": n, "num_blocks": 4096}
        engine = make_spec_engine(tiny_dirs["llama"], k=3, max_num_running=n, **kwargs) if name == "on" else \
            make_engine(tiny_dirs["llama"], **kwargs)
        model = engine.runner = BigramRunner(engine.vocab_size)
        text = [10, 11, 12, 13, 10, 11, 12, 14, 10, 11]
        params = {f"r{i}": (text, SamplingParams(max_tokens=4, temperature=1.0, seed=i, ignore_eos=True))
                  for i in range(n)}
        outputs[name] = {rid: tuple(r.outputs[0].token_ids[:3]) for rid, r in run(engine, params).items()}
        if name == "on":
            assert engine.stats.num_accepted_tokens > n // 4  # drafts decided many of the tokens counted
    assert outputs["on"] == outputs["off"]
    observed = Counter(outputs["on"].values())
    expected = {}
    p1 = model.probs_after(11)
    for a in BigramRunner.TOKENS:
        p2 = model.probs_after(a)
        for b in BigramRunner.TOKENS:
            p3 = model.probs_after(b)
            for c in BigramRunner.TOKENS:
                expected[(a, b, c)] = n * float(p1[a] * p2[b] * p3[c])
    stat, df = chi_square(observed, expected)
    assert df >= 20 and stat < chi_square_critical(df)


@pytest.fixture()
def pattern_engines(tiny_dirs):
    """(speculating, plain) engines whose model repeats the cycle of CYCLE_TEXT's tokens."""
    engines = []
    for make in (make_spec_engine, make_engine):
        engine = make(tiny_dirs["llama"], backend="fp32")
        cycle = prompt(engine, "one two three four five six seven eight nine ten ")
        engine.runner = PatternRunner(cycle, engine.vocab_size)
        engines.append((engine, cycle))
    return engines


@pytest.mark.parametrize("case", ["stop_string", "stop_token", "max_tokens", "logprobs"])
def test_stops_inside_an_accepted_run_end_the_request_as_without_speculation(pattern_engines, case):
    (on, cycle), (off, _) = pattern_engines
    base = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}
    params = SamplingParams(**{
        "stop_string": dict(base, stop=(" seven",)), "stop_token": dict(base, stop_token_ids=(cycle[8],)),
        "max_tokens": dict(base, max_tokens=13), "logprobs": dict(base, max_tokens=11, logprobs=2)}[case])
    results = [run(engine, {"a": (cycle * 2, params)})["a"] for engine in (on, off)]
    with_spec, without = (r.outputs[0] for r in results)
    assert (with_spec.token_ids, with_spec.text, with_spec.finish_reason, with_spec.stop_reason) == (
        without.token_ids, without.text, without.finish_reason, without.stop_reason)
    assert [lp.token_id for lp in with_spec.logprobs or []] == [lp.token_id for lp in without.logprobs or []]
    assert with_spec.token_times_s[-1] == with_spec.token_times_s[-2]  # the last token came in a multi-token step
    assert on.stats.num_accepted_tokens == on.stats.num_draft_tokens > 0  # the pattern model accepts every draft
    assert on.stats.num_steps < off.stats.num_steps
    assert on.kv_cache.num_free_blocks == on.kv_cache.num_blocks


def test_blocks_written_by_verify_steps_serve_later_prefix_hits(tiny_dirs):
    """A follow-up turn hits the blocks the first turn's verify steps filled (drafts partly rejected):
    its tokens are those of an engine that computes the whole follow-up prompt afresh."""
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    spec = make_spec_engine(tiny_dirs["llama"], backend="fp32")
    first = prompt(spec, COPY_TEXT * 2)
    output = run(spec, {"a": (first, params)})["a"].outputs[0].token_ids
    assert 0 < spec.stats.num_accepted_tokens < spec.stats.num_draft_tokens  # some drafts were rejected
    follow_up = first + output + prompt(spec, " and then")
    hit = spec.num_cached_prompt_tokens(follow_up)
    assert hit > len(first) + len(output) // 2  # blocks of the output, written by verify steps
    again = run(spec, {"b": (follow_up, params)})["b"]
    fresh = run(make_engine(tiny_dirs["llama"], backend="fp32", prefix_caching=False), {"b": (follow_up, params)})
    assert again.num_cached_tokens == hit
    assert again.outputs[0].token_ids == fresh["b"].outputs[0].token_ids


def test_preemption_with_speculation_gives_the_same_tokens(tiny_dirs):
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    outputs = {}
    for name, make, blocks in (("roomy", make_engine, 512), ("tight", make_spec_engine, 40)):
        engine = make(tiny_dirs["llama"], backend="fp32", num_blocks=blocks)
        batch = {f"r{i}": (prompt(engine, COPY_TEXT + str(i)), params) for i in range(4)}
        outputs[name] = {rid: r.outputs[0].token_ids for rid, r in run(engine, batch).items()}
        if name == "tight":
            assert engine.scheduler.num_preemptions > 0 and engine.stats.num_drafts > 0
            assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    assert outputs["tight"] == outputs["roomy"]


def test_constrained_requests_do_not_draft_and_stay_valid(tiny_dirs):
    schema = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 8}},
              "required": ["word"], "additionalProperties": False}
    grammar = GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(schema))
    engine = make_spec_engine(tiny_dirs["llama"], backend="auto")
    results = run(engine, {"json": (prompt(engine, COPY_TEXT * 2), SamplingParams(max_tokens=60, temperature=0,
                                                                                   grammar=grammar))})
    jsonschema.validate(json.loads(results["json"].text), schema)
    assert engine.stats.num_drafts == 0
    mixed = run(engine, {"json": (prompt(engine, COPY_TEXT * 2), SamplingParams(max_tokens=60, temperature=0.7,
                                                                                 seed=2, grammar=grammar)),
                         "free": (prompt(engine, COPY_TEXT * 2), SamplingParams(max_tokens=40, temperature=0,
                                                                                 ignore_eos=True))})
    jsonschema.validate(json.loads(mixed["json"].text), schema)
    assert mixed["json"].outputs[0].finish_reason is FinishReason.STOP
    assert engine.stats.num_drafts > 0  # the free-text row of the same batches did draft


def test_the_engine_wires_drafting_to_its_own_step_costs(tiny_dirs):
    engine = make_engine(tiny_dirs["llama"], backend="auto", speculative=SPEC)
    plain = make_engine(tiny_dirs["llama"], backend="auto")
    assert isinstance(engine.speculator, NgramSpeculator)
    assert engine.speculator.costs.cost_model is engine.scheduler.cost_model
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    batch = {"a": (prompt(engine, COPY_TEXT * 2), params)}
    assert run(engine, batch)["a"].outputs[0].token_ids == run(plain, batch)["a"].outputs[0].token_ids
    assert engine.scheduler.cost_model.num_steps == engine.stats.num_steps  # it learns from every step


def test_acceptance_is_learnt_per_match_length():
    speculator = NgramSpeculator(SpeculativeConfig(num_speculative_tokens=3), StepCostModel(CostModelConfig(
        prior_step_overhead_s=0.010, prior_decode_s_per_token=0.004)))

    def decoding(tokens):
        r = create_request(tokens, params=SamplingParams(max_tokens=100))
        r.num_computed_tokens = r.num_tokens - 1
        return r

    one_gram = decoding([7, 8, 9, 7])
    speculator.propose([one_gram])
    assert one_gram.draft_token_ids == [8, 9]
    for _ in range(3):  # drafts found by a 1-gram keep failing
        speculator.observe(one_gram, 2, 0)
    fresh_one_gram, three_gram = decoding([17, 18, 19, 17]), decoding([1, 2, 3, 9, 1, 2, 3])
    speculator.propose([fresh_one_gram])
    speculator.propose([three_gram])
    assert not fresh_one_gram.draft_token_ids
    assert three_gram.draft_token_ids == [9, 1]  # a 3-gram match still drafts, at the starting rate


def test_no_probe_where_even_a_perfect_draft_would_not_pay():
    speculator = NgramSpeculator(SpeculativeConfig(num_speculative_tokens=4, probe_interval_steps=2),
                                 StepCostModel())
    for i in range(10):  # graph-replayed single-token decodes: 4 ms; anything longer runs eagerly: 35 ms
        speculator.observe_step(FakeStep(0.004, 1, 0, 1, float(i)))
        for tokens in range(2, 6):
            speculator.observe_step(FakeStep(0.035, tokens, 0, 1, float(i)))
    r = create_request([1, 2, 3, 1, 2, 3, 1, 2], params=SamplingParams(max_tokens=100))
    r.num_computed_tokens = r.num_tokens - 1
    drafted = []
    for _ in range(6):
        speculator.propose([r])
        drafted.append(len(r.draft_token_ids))
    assert drafted == [0] * 6
