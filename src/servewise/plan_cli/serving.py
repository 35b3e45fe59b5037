"""The profile's last phase: serve a short load through the real server and calibrate against it.

``servewise serve`` starts with the profiled engine's flags (drafting and admission off), gets
the warm-up ``plan validate`` sends, then two open-loop Poisson points of synthetic chat
requests from the bench, with ``ignore_eos``: a light one (about one stream at a time) and
one with several streams, both below the engine's capacity. The same requests, at their measured send times, go through the
simulator with the profile just fitted; ``plan/serving.py`` fits the calibration.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

from servewise.bench import BenchConfig, TargetConfig, run_benchmark
from servewise.bench.client import Endpoint
from servewise.bench.distributions import parse_length
from servewise.bench.records import Outcome
from servewise.bench.schedule import LoadConfig, sweep
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import WorkloadConfig, WorkloadKind
from servewise.config import EngineConfig
from servewise.plan.knobs import Knobs, arch_from_dict, engine_spec
from servewise.plan.profile import Profile
from servewise.plan.serving import (
    MIN_REQUESTS,
    ServingCalibration,
    fit_first_token,
    fit_forward_scale,
    median_ratio,
    relative_error,
)
from servewise.plan.simulator import FleetSimulator, blocks_ever_needed
from servewise.plan.sources import ReplayWorkloads, SweepWorkloads, warmup_load
from servewise.plan.step_cost import StepShape
from servewise.plan.workload import RequestFactory, ServerTokenizer, bench_run_of, replay
from servewise.plan_cli.validate import serve_flags, served
from servewise.slo import default_slo_config

OUTPUT_TOKENS = 48  # chat-like: TPOT (decode steps) and TTFT (prefill) both weigh
UTILISATION = 0.5  # of one request's engine time: about one stream at a time
SEED = 7


def knobs_of(config: EngineConfig, threads: int) -> Knobs:
    """The plan's knobs for the engine the profile measured (admission off: nothing is shed)."""
    cache, sched = config.cache, config.scheduler
    return Knobs(max_num_seqs=sched.max_num_seqs, max_num_batched_tokens=sched.max_num_batched_tokens,
                 linear_backend=config.device.linear_backend, threads=threads, admission=False,
                 queue_policy=sched.queue_policy, prefix_caching=cache.enable_prefix_caching,
                 block_size=cache.block_size, kv_cache_memory_bytes=cache.kv_cache_memory_bytes,
                 num_kv_blocks=cache.num_blocks, kv_cache_dtype=cache.kv_cache_dtype,
                 max_model_len=sched.max_model_len)


def calibration_rate(profile: Profile, mean_prompt: int) -> float:
    """The Poisson rate that keeps the profiled engine busy ``UTILISATION`` of the time, one request at a time."""
    cost = profile.cost
    prefill = StepShape(mean_prompt, 1, 1, 0, mean_prompt * (mean_prompt + 1) // 2)
    decode = StepShape(1, 1, 1, mean_prompt + OUTPUT_TOKENS // 2, 0)
    return UTILISATION / (cost.step_s(prefill) + (OUTPUT_TOKENS - 1) * cost.step_s(decode))


def calibrate_serving(profile: Profile, config: EngineConfig, tokenizer: ServerTokenizer, *, num_requests: int,
                      max_model_len: int, model_path: str | None, say: Callable[[str], None]) -> Profile:
    """``profile`` with its ``serving`` calibration measured through ``servewise serve`` on this machine."""
    longest = max(32, min(384, max_model_len - OUTPUT_TOKENS - 64))  # room for the chat template
    workload = WorkloadConfig(kind=WorkloadKind.SYNTHETIC, input_len=parse_length(f"uniform:16,{longest}"),
                              output_len=parse_length(f"fixed:{OUTPUT_TOKENS}"))
    rate = calibration_rate(profile, (16 + longest) // 2)
    load = LoadConfig(sweep(rates=[rate]), num_requests=num_requests, seed=SEED)
    knobs = knobs_of(config, profile.backend.threads)
    flags = serve_flags(knobs, profile.backend.device, model_path=model_path)
    with tempfile.TemporaryDirectory(prefix="servewise-profile-") as tmp:
        say(f"serving {num_requests} requests at {rate:.2f}/s through `servewise serve` (serving calibration)")
        with served(flags, Path(tmp) / "server.log") as url:
            target = TargetConfig(base_url=url, endpoint=Endpoint.CHAT, ignore_eos=True)
            run_benchmark(BenchConfig(target, warmup_load(load), workload, SloSpec(), "auto"))
            result = run_benchmark(BenchConfig(target, load, workload, SloSpec(), "auto"))
    measured = {r.index: r for r in result.points[0].records if r.outcome is Outcome.OK and not r.warmup and r.ttft_s}
    if len(measured) < MIN_REQUESTS:
        raise RuntimeError(f"only {len(measured)} of {num_requests} calibration requests succeeded")
    run = bench_run_of(result)
    factory = RequestFactory(run.workload, tokenizer, endpoint=run.endpoint, counter=run.tokenizer)
    warmup = SweepWorkloads(factory, load).warmup(0)
    source = ReplayWorkloads(replay(result, factory, run), run.load)
    assert warmup is not None
    point = (source.point(0, 0), source.load, source.load.points[0])
    slo_config = default_slo_config()
    spec = engine_spec(knobs, arch_from_dict(profile.model.arch), profile.backend.device)
    blocks = sum(blocks_ever_needed(w, ld, knobs.block_size) for w, ld, _ in (warmup, point))

    def simulate(sigma: float) -> tuple[list[float], list[float], list[float], list[float]]:
        """(simulated, measured) TPOT, then (simulated, measured) TTFT, of the requests measured."""
        fleet = FleetSimulator(spec, profile.cost.scaled(sigma), slo_config[slo_config.default_class],
                               admission=False, ranges=profile.ranges, blocks_needed=blocks)
        fleet.run(*warmup)
        records = [r for r in fleet.run(*point).records if r.index in measured and r.ttft_s]
        return ([r.tpot_s or 0.0 for r in records], [measured[r.index].tpot_s or 0.0 for r in records],
                [r.ttft_s or 0.0 for r in records], [measured[r.index].ttft_s or 0.0 for r in records])

    engine_only = simulate(1.0)
    sigma = fit_forward_scale(lambda s: median_ratio(*simulate(s)[:2]))
    calibrated = simulate(sigma)
    alpha, beta = fit_first_token(calibrated[2], calibrated[3])
    calibration = ServingCalibration(
        forward_scale=sigma, ttft_fixed_s=alpha, ttft_scale=beta, num_requests=len(measured), rate_per_s=rate,
        tpot_mape_engine_only=relative_error(engine_only[0], engine_only[1]),
        tpot_mape_calibrated=relative_error(calibrated[0], calibrated[1]),
        ttft_mape_engine_only=relative_error(engine_only[2], engine_only[3]),
        ttft_mape_calibrated=relative_error([alpha + beta * s for s in calibrated[2]], calibrated[3]))
    return dataclasses.replace(profile, serving=calibration)

