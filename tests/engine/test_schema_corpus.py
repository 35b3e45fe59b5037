"""The schema corpus on the embedded model: greedy and sampled outputs all validate (jsonschema)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from servewise.config import DeviceConfig, EngineConfig, SchedulerConfig
from servewise.engine.llm_engine import LLMEngine
from servewise.engine.results import ResultBuilder
from servewise.types import GrammarKind, GrammarSpec, SamplingParams
from tests.factories import embedded_gguf_path
from tests.schema_corpus import MAX_OUTPUT_TOKENS, SCHEMAS

pytestmark = pytest.mark.slow


def test_every_corpus_schema_validates_greedy_and_sampled():
    assert len(SCHEMAS) >= 50
    engine = LLMEngine(EngineConfig(model=embedded_gguf_path(), scheduler=SchedulerConfig(max_num_seqs=128),
                                    device=DeviceConfig(num_threads=2)))
    builders = {}
    for i, (desc, schema) in enumerate(SCHEMAS):
        spec = GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(schema))
        text = engine.tokenizer.apply_chat_template([{"role": "user", "content": f"Give {desc} as JSON."}])
        prompt = engine.tokenizer.encode(text, add_special_tokens=False)
        for temperature in (0.0, 1.0):
            rid = f"{i}@{temperature}"
            engine.add_request(rid, prompt, SamplingParams(max_tokens=MAX_OUTPUT_TOKENS, temperature=temperature,
                                                           seed=i, grammar=spec))
            builders[rid] = (ResultBuilder(rid, 1), schema)
    while engine.has_unfinished_requests:
        for out in engine.step():
            builders[out.request_id][0].add(out)
    invalid = []
    for rid, (builder, schema) in builders.items():
        try:
            jsonschema.validate(json.loads(builder.result.text), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            invalid.append((rid, builder.result.text, str(exc).splitlines()[0]))
    assert invalid == []
    assert all(b.result.outputs[0].finish_reason.value == "stop" for b, _ in builders.values())
