# Two commands do all set-up on a fresh machine: `make train-local` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SPEC ?= examples/smoke.yaml
STAMP := $(VENV)/.installed

# Images: tags are $(REGISTRY)/$(NAME):<version>-<hw>. The list of images and their build
# arguments live in runner/launch/images.py (stdlib only, so these targets need no venv).
REGISTRY ?= ghcr.io/trainingjob
NAME ?= trainingjob
ENGINE ?=
HW ?= cpu
IMAGES := $(PYTHON) -m runner.launch.images
IMAGE_FLAGS = --registry '$(REGISTRY)' --name '$(NAME)' $(if $(ENGINE),--engine '$(ENGINE)') $(if $(filter-out 0 no false,$(DRY_RUN)),--dry-run)

.PHONY: install train-local test test-fast test-images e2e-kind crd lint clean images image push bench

# torch==2.13.0 is installed on its own first: on these CPU machines it comes from local disk,
# while an unpinned torch would pull a multi-GB CUDA build. GPU=cuda12|cuda13|rocm (on a fresh
# checkout or after `make clean`) takes the matching build from the index the images use.
GPU ?=
TORCH_FROM = $(if $(GPU),--extra-index-url "$$($(PYTHON) -m runner.launch.images torch-index --only '$(GPU)')")
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0 $(TORCH_FROM)
	$(PIP) install -q -c constraints.txt -e '.[train,samples,operator,dev]'
	touch $(STAMP)

install: $(STAMP)

train-local: $(STAMP)
	$(VENV)/bin/trainingjob run $(SPEC)

# tests/system-deps.sh: Debian's prometheus and chromium for the observability tests (apt-get
# where it works; elsewhere those tests skip and say why).
test: $(STAMP)
	bash tests/system-deps.sh
	$(PY) -m pytest -q -ra -n auto --dist loadfile --durations=15 -m "not image"

test-fast: $(STAMP)
	bash tests/system-deps.sh
	$(PY) -m pytest -q -ra -n auto --dist loadfile -m "not e2e and not image"

# Builds the CPU image from a local Debian base and runs the smoke job in it (podman/buildah).
test-images: $(STAMP)
	$(PY) -m pytest -q -ra -m image

# The whole Kubernetes flow on a real cluster (kind or the current kubeconfig); skips, saying
# why, where none answers. See README "Kubernetes".
e2e-kind: $(STAMP)
	TRAININGJOB_E2E_KIND=1 $(PY) -m pytest -q -ra -s tests/e2e/test_kind.py

crd: $(STAMP)
	$(PY) -m runner.k8s.crd > k8s/crd.yaml.tmp && mv k8s/crd.yaml.tmp k8s/crd.yaml

# `make images` builds every image, `make image HW=cuda12` one; DRY_RUN=1 prints the commands.
images:
	@$(IMAGES) build $(IMAGE_FLAGS)

image:
	@$(IMAGES) build --only '$(HW)' $(IMAGE_FLAGS)

push:
	@$(IMAGES) push $(IMAGE_FLAGS)

# On a GPU machine, with the system's CUDA torch (not .venv): see bench/README.md. GPUS=2 measures
# each stage on one and on two GPUs of the host, and the ratio.
GPUS ?=
bench:
	$(PYTHON) bench/bench.py $(if $(GPUS),--gpus $(GPUS)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) output cache .pytest_cache
