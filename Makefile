# Two commands do all set-up on a fresh machine with Python >= 3.11:
#   make run    installs what is missing, then starts the service
#   make test   installs what is missing, then runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test fuzz coverage lint bench profile lock clean

$(STAMP): requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	touch $(STAMP)

# Byte-compile the service first: PYTHONDONTWRITEBYTECODE=1 (set on some machines and in
# the image) would otherwise recompile app/ at every start.
run: $(STAMP)
	$(PY) -m compileall -q app
	$(PY) -m app

# Seven workers (pytest-xdist) on two cores: the suite waits on subprocesses, sockets and
# leases more than it computes (decision 0017 has the runs behind the number). The fleet
# tests share fixed ports, so they run in one group on one worker, started first
# (tests/conftest.py orders the groups ahead of the rest).
# Bytecode is written even where PYTHONDONTWRITEBYTECODE=1: pytest keeps the test modules
# with their asserts rewritten as bytecode, or every worker rewrites them all at every run.
TEST_WORKERS ?= 7
TEST_DIST = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
TEST_ENV = env -u PYTHONDONTWRITEBYTECODE
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(TEST_DIST)

# Schemathesis with 100 examples per operation (`make test` runs 25); CI runs both.
fuzz: $(STAMP)
	SCHEMATHESIS_EXAMPLES=100 $(TEST_ENV) $(PY) -m pytest tests/test_schemathesis.py

# Line coverage of app/ by the in-process tests (subprocesses are not traced).
coverage: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(TEST_DIST) --cov=app --cov-report=term

lint: $(STAMP)
	$(VENV)/bin/ruff check app tests benchmarks
	$(VENV)/bin/ruff format --check app tests benchmarks
	$(VENV)/bin/mypy app

bench: $(STAMP)
	$(PY) -m compileall -q app
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Where a send's CPU goes under scenario 1's load (py-spy): benchmarks/results/profile.md
profile: $(STAMP)
	$(PY) -m compileall -q app
	$(PY) benchmarks/profile.py

# Regenerate the lock files after changing pyproject.toml (needs `uv`: pip install uv).
lock:
	uv pip compile pyproject.toml --python-version 3.11 -o requirements.lock --quiet
	uv pip compile pyproject.toml --python-version 3.11 --extra dev -o requirements-dev.lock --quiet

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
