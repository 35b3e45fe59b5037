from servewise.engine.request import RequestStatus
from servewise.types import FinishReason, SamplingParams
from tests.engine.utils import complete_step, create_request, create_scheduler


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
