# Two commands do all set-up on a fresh machine: `make train-local` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SPEC ?= examples/smoke.yaml
STAMP := $(VENV)/.installed

.PHONY: install train-local test test-fast crd lint clean bench

# torch==2.13.0 is installed on its own first: on these CPU machines it comes from local disk,
# while an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[train,samples,dev]'
	touch $(STAMP)

install: $(STAMP)

train-local: $(STAMP)
	$(VENV)/bin/trainingjob run $(SPEC)

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not e2e"

crd: $(STAMP)
	$(PY) -m runner.k8s.crd > k8s/crd.yaml.tmp && mv k8s/crd.yaml.tmp k8s/crd.yaml

# On a GPU machine, with the system's CUDA torch (not .venv): see bench/README.md.
bench:
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) output cache .pytest_cache
