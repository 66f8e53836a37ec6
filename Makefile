# Two entry points for a fresh machine: `make quickstart` (main job) and `make test`.
# Both create .venv and install the CPU build of torch from the local wheel store and llavakit.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart
# The CPU build of torch, from the local wheel store.
TORCH ?= torch==2.13.0

.PHONY: quickstart test install clean

# The quickstart needs llavakit's core only (no LoRA, no TensorBoard); the tests add the training,
# serving and eval extras, the dev tools and lmms-eval on top (a second stamp), so `make quickstart`
# on a fresh machine installs less.
# --no-compile: Python compiles a module when it is first imported; compiling every installed file
# up front (all of torch's) was a third of the set-up's time.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile "$(TORCH)"
	$(PY) -m pip install -q --no-compile -e .
	touch $@

# The eval extra holds what the `lmms-eval` command needs; lmms-eval itself goes on without its
# declared requirements, which would replace the CPU torch and downgrade PyAV (docs/evaluation.md).
# Naming $(TORCH) again makes pip refuse, rather than carry out, any change of torch.
$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install -q --no-compile -e ".[serve,train,dev,eval]" "$(TORCH)"
	$(PY) -m pip install -q --no-compile --no-deps lmms-eval==0.7.3
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.core
	$(VENV)/bin/llavakit quickstart --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
