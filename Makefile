# Two entry points for a fresh machine: `make quickstart` (main job) and `make test`.
# Both create .venv and install the CPU build of torch from the local wheel store and llavakit.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: quickstart test install clean

# The quickstart needs llavakit's core only (no LoRA, no TensorBoard: 5 s less to install); the
# tests add the training and serving extras, the dev tools and lmms-eval on top (a second stamp),
# so `make quickstart` on a fresh machine installs less.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install -q -e ".[serve,train,dev]"
	# lmms-eval sources are read by the metric-equivalence tests (its harness deps are not needed)
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	$(PY) -m pip install -q loguru pytz
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.core
	$(VENV)/bin/llavakit quickstart --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
