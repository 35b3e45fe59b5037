import random

from servewise.engine.request import RequestStatus
from servewise.slo.admission import prefill_time_s
from servewise.slo.cost_model import StepCostModel
from servewise.slo.step_budget import prefill_budget
from servewise.types import FinishReason, SamplingParams
from tests.engine.utils import complete_step, create_request, create_scheduler
from tests.slo.factories import FakeStep


def test_token_budget_chunks_prefill_and_mixes_decodes():
    s = create_scheduler(max_num_batched_tokens=10)
    a, b = create_request(6), create_request(12)
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    assert [(c.request, c.num_new_tokens) for c in out.chunks] == [(a, 6), (b, 4)]
    assert out.num_batched_tokens == 10
    assert out.chunks[0].samples and not out.chunks[1].samples
    complete_step(s, out)
    out = s.schedule()  # a decodes (1 token) while b continues its prefill (8 more)
    assert [(c.request, c.num_new_tokens) for c in out.chunks] == [(a, 1), (b, 8)]
    assert out.chunks[1].samples


def test_max_num_seqs_limits_running():
    s = create_scheduler(max_num_seqs=2)
    for _ in range(3):
        s.add_request(create_request(4))
    out = s.schedule()
    assert len(out.chunks) == 2 and s.num_waiting == 1


def test_preemption_by_recompute_when_blocks_run_out():
    s = create_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=64)
    a, b = create_request(list(range(1, 9))), create_request(list(range(11, 19)))  # 2 blocks each: pool full
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    assert len(out.chunks) == 2
    complete_step(s, out)  # both now hold 9 tokens: the 9th needs a third block each
    out = s.schedule()
    assert out.preempted == [b] and b.status is RequestStatus.WAITING and b.num_computed_tokens == 0
    assert [c.request for c in out.chunks] == [a]
    assert s.num_preemptions == 1 and b.timings.num_preemptions == 1
    # b resumes by recomputing its prompt and the token it had generated; its first block
    # survived in the prefix cache (eviction took the tail block), so only 9 - 4 tokens are recomputed
    s.finish(a, FinishReason.STOP)
    out = s.schedule()
    assert [(c.request, c.num_new_tokens) for c in out.chunks] == [(b, 5)]
    assert b.num_computed_tokens == 4


def test_prefix_cache_hit_skips_computed_blocks():
    s = create_scheduler(block_size=4)
    a = create_request(list(range(1, 18)))
    s.add_request(a)
    complete_step(s, s.schedule())
    b = create_request(list(range(1, 13)) + [40, 41])
    s.add_request(b)
    out = s.schedule()
    chunk = next(c for c in out.chunks if c.request is b)
    assert b.num_cached_tokens == 12 and b.num_computed_tokens == 12 and chunk.num_new_tokens == 2


def test_siblings_wait_for_the_leader_prompt_then_share_it():
    s = create_scheduler(block_size=4, max_num_batched_tokens=8, prefix_caching=False)
    params = SamplingParams(n=2, max_tokens=4)
    leader = create_request(10, params=params, index=0, group_id="g")
    sibling = create_request(10, params=params, index=1, group_id="g")
    s.add_request(leader)
    s.add_request(sibling)
    out = s.schedule()
    assert [c.request for c in out.chunks] == [leader]  # budget 8 < 10: leader still prefilling
    complete_step(s, out)
    out = s.schedule()
    assert [c.request for c in out.chunks] == [leader]
    complete_step(s, out)
    out = s.schedule()
    child = next(c for c in out.chunks if c.request is sibling)
    assert sibling.block_ids[:2] == leader.block_ids[:2]
    assert child.num_new_tokens == 2  # only the tail of the prompt is recomputed


def test_finish_frees_blocks_and_is_idempotent():
    s = create_scheduler(num_blocks=8)
    r = create_request(10)
    s.add_request(r)
    s.schedule()
    s.finish(r, FinishReason.ABORT)
    s.finish(r, FinishReason.ABORT)
    assert s.kv_cache.num_free_blocks == 8 and s.num_running == 0


def test_abort_while_waiting():
    s = create_scheduler(max_num_seqs=1)
    a, b = create_request(4), create_request(4)
    s.add_request(a)
    s.add_request(b)
    s.schedule()
    s.finish(b, FinishReason.ABORT)
    assert s.num_waiting == 0 and b.finish_reason is FinishReason.ABORT


def test_priority_policy_admits_urgent_first_and_preempts_the_least_urgent():
    s = create_scheduler(num_blocks=5, block_size=4, max_num_seqs=4, policy="priority")
    batch = create_request(list(range(1, 9)), priority=1)
    s.add_request(batch)
    complete_step(s, s.schedule())
    urgent = create_request(list(range(21, 29)), priority=0)
    other_batch = create_request(list(range(31, 35)), priority=1)
    s.add_request(other_batch)
    s.add_request(urgent)
    out = s.schedule()  # urgent is admitted ahead of the batch request that came first
    assert [c.request for c in out.chunks] == [batch, urgent]
    complete_step(s, out)
    out = s.schedule()  # both need another block, one is free: the batch request gives way
    assert out.preempted == [batch] and [c.request for c in out.chunks] == [urgent]


def test_priority_policy_frees_a_seat_for_a_more_urgent_class_and_does_not_thrash():
    s = create_scheduler(max_num_seqs=2, policy="priority")
    old_batch, new_batch = create_request(4, priority=1), create_request(4, priority=1)
    s.add_request(old_batch)
    s.add_request(new_batch)
    complete_step(s, s.schedule())  # both running: every seat is taken
    urgent = create_request(list(range(50, 56)), priority=0)
    s.add_request(urgent)
    out = s.schedule()
    assert out.preempted == [new_batch]  # the least urgent, newest running request
    assert [(c.request, c.num_new_tokens) for c in out.chunks] == [(old_batch, 1), (urgent, 6)]
    assert new_batch.num_computed_tokens == 0 and s.num_waiting == 1
    for _ in range(3):  # the preempted batch request waits for a free seat, not for another preemption
        complete_step(s, out)
        out = s.schedule()
        assert not out.preempted and [c.request for c in out.chunks] == [urgent, old_batch]  # by class
    peer = create_request(4, priority=1)  # same class as the running ones: waits too
    s.add_request(peer)
    assert not s.schedule().preempted


def test_fcfs_never_preempts_for_a_seat():
    s = create_scheduler(max_num_seqs=1)
    batch = create_request(4, priority=1)
    s.add_request(batch)
    complete_step(s, s.schedule())
    s.add_request(create_request(4, priority=0))
    out = s.schedule()
    assert not out.preempted and [c.request for c in out.chunks] == [batch]


# ---- the step budget (slo/step_budget.py) -----------------------------------------------------------

def _true_step_s(num_prefill: int, num_decode: int) -> float:
    """A made-up CPU: linear terms plus one the fitted model cannot express (attention over long chunks)."""
    return 0.008 + 0.0012 * num_prefill + 0.0035 * num_decode + 4e-7 * num_prefill ** 2


def _fitted_cost_model() -> tuple[StepCostModel, float]:
    """A cost model fitted on noisy synthetic steps of that CPU, and its worst error on shapes with 16 decodes."""
    rng = random.Random(0)
    model = StepCostModel()
    for i in range(400):
        prefill, decode = rng.choice([0, 0, 8, 32, 64, 128, 256, 512]), rng.randrange(0, 33)
        if prefill + decode:
            model.observe(FakeStep(_true_step_s(prefill, decode) * rng.uniform(0.97, 1.03), prefill + decode, prefill,
                                   decode + 1, float(i)))
    cost = model.cost()
    error_s = max(abs(cost.step_s(p, 16) - _true_step_s(p, 16)) for p in range(0, 497))
    return model, error_s


def test_with_16_decodes_a_long_prompt_is_chunked_to_keep_every_step_within_the_tpot_target():
    model, error_s = _fitted_cost_model()
    tpot_s, margin = 0.12, 0.9
    s = create_scheduler(num_blocks=1024, block_size=16, max_num_seqs=32, max_num_batched_tokens=512,
                         cost_model=model, step_tpot_margin=margin)
    streams = [create_request(40, tpot_s=tpot_s) for _ in range(16)]
    for r in streams:
        s.add_request(r)
    out = s.schedule()
    assert out.num_batched_tokens == 512  # nothing decodes yet: the whole budget
    while any(r.num_output_tokens == 0 for r in streams):
        complete_step(s, out)
        out = s.schedule()
    complete_step(s, out)
    long_prompt = create_request(list(range(100, 2100)), tpot_s=tpot_s)  # no prefix shared with the streams
    s.add_request(long_prompt)
    target_s = tpot_s * margin
    expected_chunk = prefill_budget(16, 512, model.cost(), target_s)
    assert 32 < expected_chunk < 496  # really shrunk, and above the floor
    num_steps = 0
    while long_prompt.num_output_tokens == 0:
        out = s.schedule()
        decodes = [c for c in out.chunks if c.request is not long_prompt]
        prefill = sum(c.num_new_tokens for c in out.chunks if c.request is long_prompt)
        assert len(decodes) == 16 and all(c.num_new_tokens == 1 for c in decodes)  # no stream stalls
        assert prefill == min(expected_chunk, 2000 - long_prompt.num_computed_tokens)
        assert _true_step_s(prefill, 16) <= target_s + error_s
        complete_step(s, out)
        num_steps += 1
    # the TTFT prediction counts the same steps
    assert prefill_time_s(2000, 16, 512, model.cost(), target_s)[1] == num_steps


def test_an_idle_engine_uses_the_full_budget():
    model, _ = _fitted_cost_model()
    s = create_scheduler(num_blocks=1024, block_size=16, max_num_batched_tokens=512, cost_model=model)
    r = create_request(2000, tpot_s=0.05)
    s.add_request(r)
    assert s.schedule().num_batched_tokens == 512


def test_decodes_are_served_before_prompt_chunks_whatever_the_running_order():
    s = create_scheduler(max_num_batched_tokens=32, policy="priority", step_budget="fixed")
    batch = create_request(4, priority=1)
    s.add_request(batch)
    complete_step(s, s.schedule())  # it decodes now
    urgent = create_request(100, priority=0)
    s.add_request(urgent)
    complete_step(s, s.schedule())  # urgent's first chunk: 31 tokens next to batch's decode
    out = s.schedule()  # urgent is first in the running order, still prefilling
    assert [(c.request, c.num_new_tokens) for c in out.chunks] == [(urgent, 31), (batch, 1)]


# ---- speculative drafts ----------------------------------------------------------------------------

def _decoding(s, prompt: int = 8, **kwargs):
    r = create_request(prompt, **kwargs)
    s.add_request(r)
    complete_step(s, s.schedule())
    return r


def test_a_draft_is_scheduled_with_the_last_token_and_rolled_back_on_rejection():
    s = create_scheduler(block_size=4, max_num_batched_tokens=64)
    r = _decoding(s)  # 9 tokens, 8 computed
    r.draft_token_ids = [11, 12, 13, 14]
    out = s.schedule()
    (chunk,) = out.chunks
    assert chunk.num_new_tokens == 5 and chunk.draft_token_ids == (11, 12, 13, 14) and chunk.samples
    assert chunk.token_ids == [7, 11, 12, 13, 14]
    assert len(r.block_ids) == 4  # room for 13 positions
    # the engine accepted 11 and 12, then sampled 40: positions 8-10 hold valid K/V, 11-12 are overwritten later
    for token in (11, 12, 40):
        r.append_token(token)
    r.num_computed_tokens = min(r.num_computed_tokens + chunk.num_new_tokens, r.num_tokens - 1)
    s.kv_cache.cache_full_blocks(r)
    assert r.num_computed_tokens == 11 and r.num_hashed_blocks == 2  # only blocks of accepted tokens
    r.draft_token_ids = []
    out = s.schedule()
    assert out.chunks[0].num_new_tokens == 1 and out.chunks[0].token_ids == [40]
    assert len(r.block_ids) == 4  # the block of rejected positions is reused


def test_drafts_fit_the_budget_and_never_cost_a_preemption():
    s = create_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    a, b = _decoding(s, 8), _decoding(s, list(range(20, 27)))  # 3 + 2 blocks of 6
    a.draft_token_ids = [1, 2, 3, 4, 5, 6, 7, 8]  # needs 2 more blocks: only 1 is free
    b.draft_token_ids = [1]
    out = s.schedule()
    assert not out.preempted
    assert [(c.request, c.num_new_tokens, c.draft_token_ids) for c in out.chunks] == [(a, 1, ()), (b, 2, (1,))]
    tight = create_scheduler(max_num_batched_tokens=4)
    c = _decoding(tight, 4)
    c.draft_token_ids = [1, 2, 3, 4, 5]
    (chunk,) = tight.schedule().chunks
    assert chunk.num_new_tokens == 4 and chunk.draft_token_ids == (1, 2, 3)
