"""The CLI turns configuration and model-file mistakes into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse

import pytest
import torch

from servewise.cli import add_engine_args, build_parser, engine_config, main
from servewise.config import ConfigError, DeviceConfig
from servewise.engine.llm_engine import model_dtype, resolve_device


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--device", "cuda", "--linear-backend", "int8"], "linear_backend int8 is a CPU kernel"),
    (["--model", "/no/such/model.gguf"], "cannot load model from /no/such/model.gguf: no such file or directory"),
    (["--max-num-seqs", "0"], "max_num_seqs must be in [1, 4096]"),
    (["--speculative-ngram", "17"], "num_speculative_tokens must be in [0, 16]"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, monkeypatch, argv, message):
    monkeypatch.setattr("servewise.cli._setup_process", lambda level: None)  # leave the test's logging alone
    assert main(["generate", *argv, "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servewise generate: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        resolve_device(DeviceConfig(device="cuda"))


def test_model_dtype_is_fp32_on_cpu_and_bf16_on_a_gpu_unless_fp32_is_asked_for():
    assert model_dtype(DeviceConfig(), torch.device("cpu")) == torch.float32
    assert model_dtype(DeviceConfig(device="cuda"), torch.device("cuda")) == torch.bfloat16
    assert model_dtype(DeviceConfig(device="cuda", linear_backend="fp32"), torch.device("cuda")) == torch.float32


def test_the_cpu_kernel_build_comes_from_the_flag_or_the_environment(monkeypatch):
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_config(parser.parse_args([])).device.cpu_isa == "auto"
    monkeypatch.setenv("SERVEWISE_CPU_ISA", "avx2")
    parser = argparse.ArgumentParser()
    add_engine_args(parser)  # defaults are read when the parser is built
    assert engine_config(parser.parse_args([])).device.cpu_isa == "avx2"
    assert engine_config(parser.parse_args(["--cpu-isa", "generic"])).device.cpu_isa == "generic"
    with pytest.raises(ConfigError, match="cpu_isa must be"):
        DeviceConfig(cpu_isa="amx")


def test_step_budget_and_speculation_flags():
    config = engine_config(build_parser().parse_args(["serve"]))
    assert config.scheduler.step_budget == "slo" and config.speculative.num_speculative_tokens == 4
    config = engine_config(build_parser().parse_args(["serve", "--step-budget", "fixed", "--speculative-ngram", "0"]))
    assert config.scheduler.step_budget == "fixed" and not config.speculative.enabled
