import math

import pytest
import torch

from servewise.engine.sampler import Sampler, apply_logits_processors, filter_sorted_probs
from servewise.types import SamplingParams
from tests.engine.utils import create_request

VOCAB = 64


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _draw(params: SamplingParams, logits_row: torch.Tensor, batch_noise: int, seed: int) -> list[int]:
    """Sample 20 tokens for one seeded request placed at a random row of a noisy batch."""
    request = create_request(4, params=params, seed=seed)
    tokens = []
    for step in range(20):
        others = [create_request(4, params=SamplingParams(temperature=1.0), seed=100 + i) for i in range(batch_noise)]
        batch = torch.cat([_logits(batch_noise, seed=step + 7), logits_row.unsqueeze(0)])
        out = Sampler().sample(batch, others + [request])
        tokens.append(out.token_ids[-1])
    return tokens


def test_seeded_sampling_is_reproducible_whatever_the_batch():
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=1234)
    row = _logits(1, seed=3)[0]
    alone = _draw(params, row, batch_noise=0, seed=42)
    in_batch = _draw(params, row, batch_noise=7, seed=42)
    assert alone == in_batch
    assert len(set(alone)) > 1  # it really samples
    assert _draw(params, row, batch_noise=0, seed=43) != alone


def test_greedy_is_argmax():
    logits = _logits(3)
    reqs = [create_request(4, params=SamplingParams(temperature=0.0)) for _ in range(3)]
    assert Sampler().sample(logits, reqs).token_ids == logits.argmax(-1).tolist()


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)] + [-1e9] * (VOCAB - 3)])
    request = create_request(4, params=SamplingParams(temperature=1.0), seed=5)
    counts = torch.zeros(VOCAB)
    for _ in range(3000):
        counts[Sampler().sample(logits, [request]).token_ids[0]] += 1
    freqs = counts[:3] / counts.sum()
    assert torch.allclose(freqs, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


def _sorted_probs():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]])
    return probs


def test_top_k_keeps_k_tokens():
    kept = filter_sorted_probs(_sorted_probs(), torch.tensor([2]), torch.tensor([1.0]), torch.tensor([0.0]))
    assert (kept[0] > 0).tolist() == [True, True, False, False, False]


def test_top_p_keeps_the_smallest_set_reaching_p():
    kept = filter_sorted_probs(_sorted_probs(), torch.tensor([5]), torch.tensor([0.75]), torch.tensor([0.0]))
    assert (kept[0] > 0).tolist() == [True, True, True, False, False]  # 0.4 + 0.3 < 0.75 ≤ 0.9


def test_top_p_tiny_keeps_the_top_token():
    kept = filter_sorted_probs(_sorted_probs(), torch.tensor([5]), torch.tensor([1e-6]), torch.tensor([0.0]))
    assert (kept[0] > 0).tolist() == [True, False, False, False, False]


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    kept = filter_sorted_probs(_sorted_probs(), torch.tensor([5]), torch.tensor([1.0]), torch.tensor([0.5]))
    assert (kept[0] > 0).tolist() == [True, True, True, False, False]  # 0.2 ≥ 0.5 × 0.4


def test_filtered_sampling_never_picks_a_filtered_token():
    logits = _logits(1, seed=9)
    top2 = set(logits[0].topk(2).indices.tolist())
    request = create_request(4, params=SamplingParams(temperature=2.0, top_k=2), seed=1)
    picks = {Sampler().sample(logits, [request]).token_ids[0] for _ in range(200)}
    assert picks == top2


def test_logit_bias_forces_and_bans_tokens():
    logits = _logits(1)
    forced = create_request(4, params=SamplingParams(temperature=0.0, logit_bias=((5, 100.0),)))
    assert Sampler().sample(logits, [forced]).token_ids == [5]
    top = int(logits.argmax())
    banned = create_request(4, params=SamplingParams(temperature=0.0, logit_bias=((top, -100.0),)))
    assert Sampler().sample(logits, [banned]).token_ids[0] != top


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.zeros(1, VOCAB)
    logits[0, 1], logits[0, 2] = 2.0, -2.0
    r = create_request([1, 2], params=SamplingParams(repetition_penalty=2.0))
    out = apply_logits_processors(logits, [r])
    assert out[0, 1].item() == 1.0 and out[0, 2].item() == -4.0 and out[0, 3].item() == 0.0
    assert logits[0, 1].item() == 2.0  # the input is untouched


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.zeros(1, VOCAB)
    r = create_request([9], params=SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    for t in (3, 3, 4):
        r.append_token(t)
    out = apply_logits_processors(logits, [r])
    assert out[0, 3].item() == pytest.approx(-1.0)  # 0.5 + 2 × 0.25
    assert out[0, 4].item() == pytest.approx(-0.75)
    assert out[0, 9].item() == 0.0  # prompt token: not penalised


def test_min_tokens_suppresses_eos_and_stop_tokens():
    logits = torch.zeros(1, VOCAB)
    logits[0, 0] = 10.0  # eos
    logits[0, 6] = 9.0  # a stop token id
    r = create_request(4, params=SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(6,)), eos=(0,))
    assert Sampler().sample(logits, [r]).token_ids[0] not in (0, 6)
    r.append_token(1)
    r.append_token(1)
    assert Sampler().sample(logits, [r]).token_ids == [0]


def test_logprobs_are_normalised_and_ordered():
    logits = _logits(2)
    reqs = [create_request(4, params=SamplingParams(temperature=0.0, logprobs=5)),
            create_request(4, params=SamplingParams(temperature=0.0))]
    out = Sampler().sample(logits, reqs)
    lp = out.logprobs[0]
    assert lp is not None and out.logprobs[1] is None
    values = [v for _, v in lp.top]
    assert values == sorted(values, reverse=True) and len(values) == 5
    assert lp.top[0][0] == lp.token_id == out.token_ids[0]
    assert lp.logprob == pytest.approx(values[0])
    full = torch.log_softmax(logits[0], -1)
    assert torch.logsumexp(full, -1).item() == pytest.approx(0.0, abs=1e-5)
    assert [t for t, _ in lp.top] == full.topk(5).indices.tolist()
    assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6
