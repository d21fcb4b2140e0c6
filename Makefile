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

# Two test processes: most integration tests wait on real processes and sockets, so two share the
# machine's cores well (-n 2 took the default run from ~18 to ~14 min on the 2-core dev machine
# under load); a file's tests stay in one process (--dist loadfile) so module fixtures are built once.
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadfile --durations=20

test-all: $(VENV)/.installed
	$(PY) -m pytest -m ''

clean:
	rm -rf $(VENV) swarmrl-data .pytest_cache
