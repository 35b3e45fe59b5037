"""Chat templates render as transformers renders them, inside the sandbox and its limits.

Overhead of the limits, measured on the project machine (one core, SmolLM2's template, 11
messages): ~135 us per render against ~55 us for a bare ImmutableSandboxedEnvironment; a
sys.settrace deadline (tried first) took ~600 us.
"""

from __future__ import annotations

import datetime
import json
import tracemalloc
from pathlib import Path

import pytest

from servewise.errors import InvalidRequestError
from servewise.loading import load_checkpoint
from servewise.loading.chat_template import ChatTemplate
from tests.factories import write_tiny_hf_checkpoint

pytestmark = pytest.mark.timeout(60)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? 😀 日本語"}],
    [{"role": "user", "content": "text with {braces} and %s and {{ jinja }} and %99999999d"}],
]
USER = [{"role": "user", "content": "hi"}]


def render(source: str, messages: list | None = None, **kwargs: object) -> str:
    return ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"}, timeout_s=0.3).render(
        USER if messages is None else messages, **kwargs)


def test_tiny_checkpoint_matches_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    ours = load_checkpoint(str(directory)).tokenizer
    reference = AutoTokenizer.from_pretrained(str(directory))
    for messages in CONVERSATIONS:
        for add in (True, False):
            expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            assert ours.apply_chat_template(messages, add_generation_prompt=add) == expected


def test_no_template_is_an_invalid_request(tmp_path: Path) -> None:
    tokenizer = load_checkpoint(str(write_tiny_hf_checkpoint(tmp_path / "m", chat_template=False))).tokenizer
    assert tokenizer.chat_template is None
    with pytest.raises(InvalidRequestError, match="no chat template"):
        tokenizer.apply_chat_template(USER)


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    (directory / "chat_template.jinja").write_text("{{ messages[0].content | upper }}")
    assert load_checkpoint(str(directory)).tokenizer.apply_chat_template(USER) == "HI"


def test_named_templates_in_tokenizer_config(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]
    config_path.write_text(json.dumps(config))
    assert load_checkpoint(str(directory)).tokenizer.apply_chat_template(USER) == "plain"


def test_huggingface_helpers() -> None:
    assert render("{{ messages | tojson }}", [{"role": "user", "content": "é<b>"}]) == \
        json.dumps([{"role": "user", "content": "é<b>"}], ensure_ascii=False)
    assert render("{{ {'b': 1, 'a': [1]} | tojson(indent=2, sort_keys=True) }}") == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'
    assert render("{{ strftime_now('%Y') }}") == str(datetime.datetime.now().year)
    assert render("{% generation %}{{ messages[0].content }}{% endgeneration %}") == "hi"
    assert render("{% for m in [1, 2, 3] %}{% if m == 2 %}{% break %}{% endif %}{{ m }}{% endfor %}") == "1"
    assert render("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}") \
        == "1"
    assert render("{{ dict(a=1)['a'] }}{{ bos_token }}{{ eos_token }}") == "1<s></s>"
    assert render("{{ messages[0].thinking }}", [{"role": "assistant", "content": "", "reasoning_content": "r"}]) == "r"
    assert render("{{ tools[0].name }} {{ add_generation_prompt }}", tools=[{"name": "f"}]) == "f True"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].system('true') }}",
    "{{ self.__init__.__globals__ }}",
    "{% set ns = namespace(_x=1) %}",
    "{% set ns = namespace() %}{% set ns._y = 1 %}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages.append(1) }}",
    "{{ raise_exception.__globals__['__builtins__'] }}x",
    "{{ '{0.__class__.__mro__}'.format(1) }}x",
])
def test_sandbox_escapes_are_refused(source: str) -> None:
    try:
        output = render(source)
    except InvalidRequestError as exc:
        assert "unsafe" in exc.message or "underscore" in exc.message or "chat template" in exc.message
    else:  # the sandbox may hand back an empty undefined instead of raising: nothing leaks
        assert output in ("", "x"), output


@pytest.mark.parametrize("source, fragment", [
    ("{{ raise_exception('Conversation roles must alternate') }}", "chat template error: Conversation roles must alternate"),
    ("{% for %}", "the model's chat template is invalid: line 1"),
    ("{{ messages[5]['content'] }}", "chat template error"),
    ("{{ messages[0]['content'] + 1 }}", "chat template failed on these messages: TypeError"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer than 0.3 s"),
    ("{% set xs = range(100000) | list %}{% for i in xs %}{% for j in xs %}{% endfor %}{% endfor %}", "took longer"),
    ("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}", "took longer"),
    ("{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxx' }}{% endfor %}", "exceed 1000000 characters"),
    ("{{ 'x' * 1000000000 }}", "a repetition"),
    ("{{ [0] * 1000000000 }}", "a repetition"),
    ("{{ 2 ** 1000000000 }}", "a power"),
    ("{{ 'x' | center(1000000000) }}", "an argument of 1000000000"),
    ("{{ 'x\nx' | indent(1000000000) }}", "an argument of 1000000000"),
    ("{{ range(10) | slice(1000000000) | list }}", "an argument of 1000000000"),
    ("{{ '%0999999999d' % 1 }}", "a format field"),
    ("{{ '%999999999s' | format('a') }}", "a format field"),
    ("{{ '{:>999999999}'.format(1) }}", "a format field"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "concatenation"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "concatenation"),
    ("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "concatenation"),
    ("{{ ('a' * 100000) | replace('a', 'bbbbbbbbbbbbbbbbbbbb') }}", "a value"),
])
def test_failures_and_limits_are_invalid_requests(source: str, fragment: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequestError) as info:
            render(source)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fragment in info.value.message
    assert "Traceback" not in info.value.message and len(info.value.message) < 400
    assert peak_bytes < 64 * 1024 * 1024


def test_default_time_limit_through_the_tokenizer(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    (directory / "chat_template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    with pytest.raises(InvalidRequestError, match="took longer than 1 s"):
        load_checkpoint(str(directory)).tokenizer.apply_chat_template(USER)


def test_messages_must_be_a_list_of_objects() -> None:
    for messages in ("hi", [1, 2], {"role": "user"}):
        with pytest.raises(InvalidRequestError, match="messages must be a list of objects"):
            render("x", messages)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="at least one message"):
        render("x", [])


def test_user_text_is_data_not_format_strings() -> None:
    text = "%9999999999d {:>9999999999} {{ 10**10 }} " + "y" * 1000
    assert render("{{ messages[0].content | trim }}", [{"role": "user", "content": text}]) == text.strip()
