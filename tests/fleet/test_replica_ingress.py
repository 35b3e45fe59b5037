"""A replica and the ingress's backend wired together in one process, without Ray: admission at
both ends, the shed retry, failover before output, the cut stream, cancellation, the stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import replace

import pytest

from servewise.config import CacheConfig, EngineConfig, SchedulerConfig
from servewise.engine.async_engine import AsyncEngine
from servewise.errors import OverloadedError, ReplicaLostError
from servewise.fleet.ingress import FleetBackend, ReplicaFailure, VersionTarget
from servewise.fleet.messages import Accepted, OutputBatch, ReplicaMessage, ReplicaRequest
from servewise.fleet.replica import ReplicaServer, ReplicaSettings
from servewise.fleet.router_core import FleetRouter
from servewise.fleet.routing import RouteReason
from servewise.fleet.stats import ReplicaStats
from servewise.server.backend import CallContext
from servewise.server.slo_runtime import SLOSettings
from servewise.slo import SLOClass, SLOConfig
from servewise.types import SamplingParams
from tests.engine.conftest import make_engine

pytestmark = pytest.mark.asyncio

CLASS = SLOClass("interactive", ttft_s=30.0, tpot_s=5.0)
TIGHT = SLOClass("tight", ttft_s=0.001, admission_slack=1.0)
SETTINGS = ReplicaSettings(SLOSettings(slo_config=SLOConfig((CLASS, TIGHT), default_class="interactive")))
PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture()
def replicas(tiny_dirs):
    made = {}
    for name in ("r0", "r1"):
        llm = make_engine(tiny_dirs["llama"], backend="auto", num_blocks=256)
        config = EngineConfig(model=str(tiny_dirs["llama"]), cache=CacheConfig(block_size=4, num_blocks=256),
                              scheduler=SchedulerConfig(max_num_batched_tokens=256))
        made[name] = ReplicaServer(AsyncEngine(llm), config, SETTINGS, name)
    yield made
    for r in made.values():
        r.engine.shutdown()


def start(replicas) -> None:
    loop = asyncio.get_running_loop()
    for r in replicas.values():
        r.start(loop)


def publish(router: FleetRouter, replicas) -> None:
    router.update_stats([ReplicaStats.from_dict(r.routing_stats()) for r in replicas.values()])


def fleet(replicas, router: FleetRouter, failing: dict[str, int] | None = None) -> FleetBackend:
    """An ingress whose `send` does what Ray's router does with ours: choose, mark routed, call."""
    failing = failing if failing is not None else {}

    async def send(req: ReplicaRequest) -> AsyncGenerator[ReplicaMessage, None]:
        order, reason = router.choose(req.route, list(replicas))
        target = order[0]
        router.on_routed(req.route, target, reason)
        count = 0
        stream = replicas[target].generate(req)
        try:
            async for msg in stream:
                if isinstance(msg, OutputBatch):
                    count += 1
                    if failing.get(target) is not None and count > failing[target]:
                        raise ReplicaFailure("actor died", target)  # its work dies with it
                yield msg
        finally:
            await stream.aclose()

    async def reports():
        return [r.report() for r in replicas.values()]

    any_replica = next(iter(replicas.values()))
    return FleetBackend(any_replica.engine.tokenizer, any_replica.model_info, VersionTarget("v1", router, send, reports))


async def collect(backend: FleetBackend, request_id: str, prompt, slo=CLASS):
    ctx = CallContext(arrival_s=time.monotonic(), slo_class=slo, admission_key=0)
    return [out async for out in await backend.open_stream(request_id, prompt, PARAMS, ctx)]


def tokens_of(outputs) -> list[int]:
    return [t for out in outputs for c in out.outputs for t in c.token_ids]


async def test_a_replica_streams_the_same_tokens_as_its_engine_in_batches(replicas):
    start(replicas)
    r0 = replicas["r0"]
    direct = [o async for o in r0.engine.generate("direct", [5, 6, 7, 8, 9], PARAMS)]
    router = FleetRouter()
    req = fleet(replicas, router).route_info(router, "k", [5, 6, 7, 8, 9], CLASS)
    msgs = [m async for m in r0.generate(ReplicaRequest("via", (5, 6, 7, 8, 9), PARAMS, CLASS, req, 0.0))]
    assert isinstance(msgs[0], Accepted) and msgs[0].replica_id == "r0"
    batches = [m for m in msgs[1:] if isinstance(m, OutputBatch)]
    assert tokens_of([o for b in batches for o in b.outputs]) == tokens_of(direct)
    assert batches[-1].outputs[-1].finished
    stats = ReplicaStats.from_dict(r0.routing_stats())
    assert stats is not None and stats.replica_id == "r0" and not stats.pending
    classes = r0.slo_snapshot()["classes"]["classes"]
    assert classes["interactive"]["windows"]["1m"]["counts"]["num_success"] == 1


async def test_the_router_routes_through_the_replicas_and_shares_a_prefix(replicas):
    start(replicas)
    router = FleetRouter()
    backend = fleet(replicas, router)
    publish(router, replicas)
    shared = list(range(10, 74))  # 16 blocks of 4
    first = await collect(backend, "a", shared + [1, 2, 3])
    second = await collect(backend, "b", shared + [4, 5, 6])
    assert first[-1].finished and second[-1].finished
    assert second[0].num_cached_tokens == 64  # the prefix-affine replica already held the 64 shared tokens
    assert sum(n for (_, reason), n in router.num_routed.items() if reason == RouteReason.PREFIX.value) == 1


async def test_a_replica_that_sheds_hands_the_request_to_the_next_best_then_the_client_gets_429(replicas):
    start(replicas)
    router = FleetRouter()
    backend = fleet(replicas, router)
    # The router's view is stale: r0 looked idle and r1 busy when they published; since then r0
    # took a long prefill for the tight class. r0 sheds, the retry goes to r1, which admits it.
    r1_busy = replace(ReplicaStats.from_dict(replicas["r1"].routing_stats()), queued_prefill_tokens={0: 500})
    router.update_stats([ReplicaStats.from_dict(replicas["r0"].routing_stats()), r1_busy])
    replicas["r0"].admission.on_admitted("backlog-r0", 10_000, TIGHT)
    out = await collect(backend, "x", list(range(1, 40)), slo=TIGHT)
    assert out[-1].finished and backend.num_shed_retries == 1
    # Both shed: after one retry the client gets the 429.
    replicas["r1"].admission.on_admitted("backlog-r1", 10_000, TIGHT)
    with pytest.raises(OverloadedError):
        await collect(backend, "y", list(range(1, 40)), slo=TIGHT)
    assert backend.num_shed_retries == 2


async def test_failover_before_any_output_and_a_cut_stream_after(replicas):
    start(replicas)
    both_die = fleet(replicas, FleetRouter(), failing={"r0": 0, "r1": 0})
    publish(both_die.router, replicas)
    with pytest.raises(ReplicaLostError):  # each dies before output: two failovers, then the error
        await collect(both_die, "dead", list(range(1, 30)))
    assert both_die.num_failovers == 2
    one_dies = fleet(replicas, FleetRouter(), failing={"r0": 0})
    one_dies.router.update_stats([ReplicaStats.from_dict(replicas["r0"].routing_stats())])  # r0 is tried first
    out = await collect(one_dies, "moved", list(range(1, 30)))
    assert out[-1].finished and one_dies.num_failovers == 1
    dies_mid_stream = fleet({"r0": replicas["r0"]}, FleetRouter(), failing={"r0": 1})
    got = []
    with pytest.raises(ReplicaLostError) as err:
        async for out in await dies_mid_stream.open_stream("cut", list(range(1, 30)), PARAMS,
                                                           CallContext(time.monotonic(), CLASS, 0)):
            got.append(out)
    assert got and "r0" in err.value.message and dies_mid_stream.num_cut_streams == 1


async def test_leaving_a_stream_early_aborts_the_replicas_request_and_frees_its_blocks(replicas):
    start(replicas)
    router = FleetRouter()
    publish(router, replicas)
    backend = fleet({"r0": replicas["r0"]}, router)
    llm = replicas["r0"].engine.engine
    free_before = llm.kv_cache.num_free_blocks
    params = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
    stream = await backend.open_stream("long", list(range(1, 60)), params, CallContext(time.monotonic(), CLASS, 0))
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(100):
        if not llm.has_unfinished_requests and llm.kv_cache.num_free_blocks == free_before:
            break
        await asyncio.sleep(0.02)
    assert not llm.has_unfinished_requests and llm.kv_cache.num_free_blocks == free_before
    assert backend.num_in_flight == 0 and not router._in_flight


async def test_replicas_publish_what_the_autoscaler_reads(replicas):
    start(replicas)
    r0 = replicas["r0"]
    idle = r0.autoscaling_stats()
    assert idle["tpot"] == 0.0 and idle["shed_rps"] == 0.0
    r0.admission.on_admitted("queued", 5000, CLASS)
    busy = r0.autoscaling_stats()
    assert busy["queue"] > idle["queue"] and busy["ttft"] > idle["ttft"]
    r0.drain()
    assert ReplicaStats.from_dict(r0.routing_stats()).accepting is False
    r0.check_health()  # draining is healthy
    r0.engine.shutdown()
    with pytest.raises(RuntimeError, match="unhealthy"):
        r0.check_health()
