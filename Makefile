# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv with python3 (3.11+) and install swarmrl into it.
# torch is installed first, pinned, so that a CPU machine gets the CPU wheel and nothing
# else pulls a CUDA build. On a GPU box: make demo TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_ARGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-all clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -e '.[dev]'
	@# The libp2p swarm layer is an extra: without it every role runs over HTTP only.
	$(PIP) install -e '.[p2p]' || echo "libp2p (the p2p extra) did not install: the demo runs over HTTP only and the libp2p tests will skip"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/swarmrl demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest

test-all: $(VENV)/.installed
	$(PY) -m pytest -m ''

clean:
	rm -rf $(VENV) swarmrl-data .pytest_cache
