"""Queue policies, and the SLO-class ordering measured end to end in the engine."""

from __future__ import annotations

import time

import pytest

from servewise.engine.queue_policy import FCFSQueue, PriorityQueue, create_queue
from servewise.types import SamplingParams
from tests.engine.conftest import make_engine
from tests.engine.test_engine_correctness import engine_greedy
from tests.engine.utils import create_request


def test_fcfs_keeps_arrival_order_and_puts_preempted_first():
    q = FCFSQueue()
    a, b, c = create_request(), create_request(), create_request()
    q.push(a)
    q.push(b)
    q.push_front(c)
    assert list(q) == [c, a, b] and q.pop() is c and len(q) == 2


def _with_deadline(priority: int, deadline_s: float):
    request = create_request(priority=priority)
    request.deadline_s = deadline_s
    return request


def test_priority_orders_by_class_then_deadline_then_arrival():
    now = [100.0]
    q = PriorityQueue(clock=lambda: now[0])
    batch, early, late = _with_deadline(10, 130.0), _with_deadline(0, 101.0), _with_deadline(0, 102.0)
    for r in (batch, late, early):
        q.push(r)
    assert list(q) == [early, late, batch]
    q.remove(late)
    assert list(q) == [early, batch] and len(q) == 2


def test_overdue_requests_age_into_the_most_urgent_rank():
    now = [100.0]
    q = PriorityQueue(clock=lambda: now[0])
    batch, interactive = _with_deadline(10, 110.0), _with_deadline(0, 112.0)
    q.push(interactive)
    q.push(batch)
    assert q.peek() is interactive
    now[0] = 111.0  # the batch request missed its own (longer) target: it goes first now
    assert q.peek() is batch


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown queue policy"):
        create_queue("random")


def _interactive_ttft_s(path, policy: str) -> float:
    engine = make_engine(path, backend="auto", max_num_seqs=2, max_num_batched_tokens=64)
    engine.scheduler.waiting = create_queue(policy)
    now = time.monotonic()
    batch = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    for i in range(12):
        engine.add_request(f"batch{i}", [7 + i] * 40, batch, priority=10, deadline_s=now + 30)
    engine.add_request("interactive", [3] * 40, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True),
                       priority=0, deadline_s=now + 2)
    while engine.has_unfinished_requests:
        for out in engine.step():
            if out.request_id == "interactive" and out.outputs and out.outputs[0].token_ids:
                t = out.timings
                return t.first_token_s - t.arrival_s
    raise AssertionError("the interactive request never produced a token")


def test_interactive_request_beats_a_batch_backlog_only_under_priority(tiny_dirs):
    fcfs = _interactive_ttft_s(tiny_dirs["llama"], "fcfs")
    priority = _interactive_ttft_s(tiny_dirs["llama"], "priority")
    assert priority < fcfs / 3


def test_a_full_batch_gives_an_interactive_request_a_seat_and_the_preempted_one_recomputes(tiny_dirs):
    path = tiny_dirs["llama"]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    solo = engine_greedy(make_engine(path), [[7] * 40, [8] * 40], num_tokens=16, alone=True)
    engine = make_engine(path, max_num_seqs=2, max_num_batched_tokens=64)
    engine.scheduler.waiting = create_queue("priority")
    tokens: dict[str, list[int]] = {"batch0": [], "batch1": [], "interactive": []}

    def step() -> None:
        for out in engine.step():
            tokens[out.request_id].extend(out.outputs[0].token_ids)

    engine.add_request("batch0", [7] * 40, params, priority=1)
    engine.add_request("batch1", [8] * 40, params, priority=1)
    while not tokens["batch1"]:
        step()  # both seats are taken by decoding batch requests
    engine.add_request("interactive", [3] * 40, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True),
                       priority=0)
    step()
    assert tokens["interactive"], "the interactive request waited for a batch request to finish"
    while engine.has_unfinished_requests:
        step()
    assert engine.scheduler.num_preemptions == 1
    assert [tokens["batch0"], tokens["batch1"]] == solo  # the preempted one recomputed to the same tokens
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
