"""Rendering a model's Jinja chat template, as Hugging Face does, inside limits.

The environment matches transformers' ``apply_chat_template`` (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, ``{% generation %}``, its ``tojson``,
``raise_exception``, ``strftime_now``, restricted ``dict``/``namespace``), so prompts are
byte-identical. On top of the sandbox, which blocks escapes to Python internals:

- time: a deadline checked on every call the template makes (macros included) and on every
  256th item of every ``{% for %}`` loop (each loop's iterable is wrapped when the template is
  parsed), so nested loops that print nothing are stopped too. Between two checks only bounded
  work can happen: filters walk data whose size is capped. A ``sys.settrace`` deadline, tried
  first, made renders 4-6x slower; this costs far less (see test_chat_template.py).
- size: output is generated chunk by chunk and counted; ``*``, ``**``, ``+``, ``%``, ``~``, every
  call and the filters that can outgrow their input (center, indent, format, replace, ...) are
  checked, so that no single expression builds a string, list or int far past the output limit
  before the count sees it. Format widths are checked only in real format strings, never in
  message text.

Every failure becomes `InvalidRequestError` with a one-line message, never a Jinja traceback.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import is_dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from servewise.errors import InvalidRequestError

MAX_OUTPUT_CHARS = 1_000_000
RENDER_TIMEOUT_S = 1.0
_TEMPLATE_FILENAME = "<chat_template>"
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_ITEMS_PER_DEADLINE_CHECK = 256
_CHUNKS_PER_SIZE_CHECK = 32  # output chunks are counted in batches; each chunk is size-capped
# Filters whose arguments or results can be far larger than their input ("x"|center(10**9));
# the others (upper, trim, length, ...) are left unwrapped: they are called per word in loops.
_SIZE_RISKY_FILTERS = frozenset({"batch", "center", "format", "indent", "join", "list", "pprint", "replace",
                                 "slice", "sum", "truncate", "urlize", "wordwrap", "xmlattr"})
# Monotonic time by which the render in this thread/task must end (renders may run concurrently).
_deadline_s: ContextVar[float] = ContextVar("chat_template_deadline_s", default=math.inf)


def _check_deadline() -> None:
    if time.monotonic() > _deadline_s.get():
        raise _RenderTimeout


class _RenderTimeout(BaseException):
    """A BaseException, so that no `except Exception` inside Jinja can swallow it."""


class _LimitExceeded(jinja2.exceptions.SecurityError):
    pass


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; a no-op here."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))


class _LimitedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b` normally compiles to a plain "".join; route it through the size check.
        self.write("environment.limited_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_PERCENT_FIELD = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d*))?")
_BRACE_FIELD = re.compile(r"\{[^{}]*\}")
_DIGITS = re.compile(r"\d+")


def _widest_format_field(fmt: str) -> int:
    """The largest width or precision a %- or {}-format string asks for."""
    numbers = [int(n) for m in _PERCENT_FIELD.finditer(fmt) for n in m.groups() if n]
    numbers += [int(n) for m in _BRACE_FIELD.finditer(fmt) for n in _DIGITS.findall(m.group())]
    return max(numbers, default=0)


def _sized(value: Any) -> int:
    if type(value) is str:  # the common case, ahead of the slower isinstance
        return len(value)
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """The HF sandbox plus size checks on the operations that can allocate a lot at once."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _LimitedCodeGenerator

    def __init__(self, max_chars: int) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        self.max_chars = max_chars
        self.filters = {name: self._limit_callable(f) if name in _SIZE_RISKY_FILTERS else f
                        for name, f in self.filters.items()}

    def _too_big(self, what: str) -> _LimitExceeded:
        return _LimitExceeded(f"{what} would exceed the limit of {self.max_chars} characters")

    def _check_args(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.max_chars:
                raise self._too_big(f"an argument of {arg}")

    def _check_format(self, fmt: Any) -> None:
        # Only real format strings: message text passed to other calls may contain "%9999999d".
        if isinstance(fmt, str) and _widest_format_field(fmt) > self.max_chars:
            raise self._too_big("a format field")

    def _check_result(self, result: Any) -> Any:
        if _sized(result) > self.max_chars:
            raise self._too_big("a value")
        return result

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            # `for x in it` -> `for x in environment.checked_iter(it)`: the deadline is checked as
            # the loop runs, even when its body calls nothing.
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("checked_iter"), [loop.iter], [], None, None,
                                   lineno=loop.lineno)
        return tree

    def checked_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for count, item in enumerate(iterable):
            if count % _ITEMS_PER_DEADLINE_CHECK == 0:
                _check_deadline()
            yield item

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:  # "...".format / format_map, bound when the attribute is read
            self._check_format(value.__self__)
        return wrapped

    def _limit_callable(self, func: Callable[..., Any]) -> Callable[..., Any]:
        is_format = getattr(func, "__name__", "") == "do_format"

        @functools.wraps(func)  # keeps jinja's pass_context & co. markers
        def limited(*args: Any, **kwargs: Any) -> Any:
            self._check_args(args, kwargs)
            if is_format and args:
                self._check_format(args[0])
            return self._check_result(func(*args, **kwargs))
        return limited

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_deadline()
        __self._check_args(args, kwargs)
        return __self._check_result(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        # Called for every + * ** % in the template (`+` joins most chat prompts): keep it lean.
        if operator == "+":
            if _sized(left) + _sized(right) > self.max_chars:
                raise self._too_big("a concatenation")
            return left + right
        if operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else 0
            if max(_sized(left), _sized(right)) * abs(count) > self.max_chars:
                raise self._too_big("a repetition")
            return left * right
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 4 * self.max_chars:
                raise self._too_big("a power")
        elif operator == "%":
            self._check_format(left)
        return self._check_result(super().call_binop(context, operator, left, right))

    def limited_concat(self, parts: Sequence[Any]) -> str:
        texts = [str(p) for p in parts]
        if sum(len(t) for t in texts) > self.max_chars:
            raise self._too_big("a concatenation")
        return "".join(texts)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # HF's override: Jinja's own tojson escapes HTML characters.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names (a path to interpreter internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 -- same trick as Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")


def _plain(value: Any) -> Any:
    """Rebuild template inputs from JSON types only; anything else becomes "<TypeName>" (as HF)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, numpy scalars) can carry methods the sandbox does not know: strip them.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value) if isinstance(value, tuple) else [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in vars(value).items()}
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    # As HF: fill `reasoning_content` from older names, and `thinking` for templates that read that.
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


class ChatTemplate:
    """One compiled chat template with its special-token variables."""

    def __init__(self, source: str, template_vars: Mapping[str, str], *,
                 max_output_chars: int = MAX_OUTPUT_CHARS, timeout_s: float = RENDER_TIMEOUT_S) -> None:
        self.source = source
        self.template_vars = dict(template_vars)  # bos_token, eos_token, ... as HF passes them
        self.max_output_chars = max_output_chars
        self.timeout_s = timeout_s
        self._template: jinja2.Template | None = None

    def _compiled(self) -> jinja2.Template:
        if self._template is None:
            env = _LimitedSandbox(self.max_output_chars)
            env.filters["tojson"] = env._limit_callable(_tojson)
            env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                               dict=_TemplateDict(), namespace=_TemplateNamespace)
            try:
                code = env.compile(self.source, filename=_TEMPLATE_FILENAME)
            except jinja2.TemplateSyntaxError as exc:
                raise InvalidRequestError(f"the model's chat template is invalid: line {exc.lineno}: {exc.message}") \
                    from None
            self._template = env.template_class.from_code(env, code, env.make_globals(None))
        return self._template

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            raise InvalidRequestError("messages must be a list of objects", param="messages")
        if not messages:  # as transformers
            raise InvalidRequestError("messages must contain at least one message", param="messages")
        template = self._compiled()
        context = {**self.template_vars, **_plain(extra)}
        context.update(messages=[_alias_reasoning(m) for m in _plain(messages)],
                       tools=_plain(extra.get("tools")), documents=_plain(extra.get("documents")),
                       add_generation_prompt=add_generation_prompt)
        chunks: list[str] = []
        num_chars = 0
        deadline = _deadline_s.set(time.monotonic() + self.timeout_s)
        try:
            generator = template.generate(**context)
            while batch := list(itertools.islice(generator, _CHUNKS_PER_SIZE_CHECK)):
                num_chars += sum(map(len, batch))
                if num_chars > self.max_output_chars:
                    raise _LimitExceeded(f"the prompt would exceed {self.max_output_chars} characters")
                chunks += batch
        except _RenderTimeout:
            raise InvalidRequestError(f"rendering the chat template took longer than {self.timeout_s:g} s") from None
        except _LimitExceeded as exc:
            raise InvalidRequestError(f"chat template output too large: {exc}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidRequestError(f"chat template refused an unsafe operation: {_short(exc)}") from None
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"chat template error: {_short(exc)}") from None
        except Exception as exc:  # RecursionError, TypeError from the data, MemoryError, ...
            raise InvalidRequestError(f"chat template failed on these messages: {type(exc).__name__}: {_short(exc)}") \
                from None
        finally:
            _deadline_s.reset(deadline)
        return "".join(chunks)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
