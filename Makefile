# Two entry points for a fresh machine: `make quickstart` (main job) and `make test`.
# Both create .venv, install the CPU build of torch from the local wheel store and llavakit.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: quickstart test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[serve,train,dev]"
	# lmms-eval sources are read by the metric-equivalence tests (its harness deps are not needed)
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	$(PY) -m pip install -q loguru pytz
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(VENV)/bin/llavakit quickstart --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
