# Two commands set everything up: `make run` (the default job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock run test test-fast docs docs-serve clean reference-env

install: $(STAMP)

# Installs the test extra, which pulls every extra the tests use (Ray, submitit, trackers, ONNX, robot
# data), at the exact versions of requirements.lock; re-installs only when either file changes (idempotent).
# The installer is uv (from PyPI, pinned here, with the system's CA certificates as pip uses them):
# the same packages as pip resolves from the lock, in a third of the time on a clean clone. Where uv
# cannot install, pip installs the same pins, saying so.
UV_VERSION := 0.13.10
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) && \
	  $(BIN)/uv pip install --quiet --system-certs --python $(BIN)/python -e '.[test]' -c requirements.lock; } || \
	{ echo "make install: uv failed, installing with pip"; $(BIN)/pip install --quiet --upgrade pip && \
	  $(BIN)/pip install --quiet -e '.[test]' -c requirements.lock; }
	touch $(STAMP)

# Re-pin requirements.lock to what pyproject's ranges resolve to today (then run `make test`).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e '.[test]'
	{ sed -n '1,2p' requirements.lock; .venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^steerflow\|^pip=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock

# Default job: LPS on cube-single-task2 at the CPU protocol (data generated on first use), then its
# success next to the committed results of BC-MF and the authors' code on the same task.
run: install
	MUJOCO_GL=egl $(BIN)/steerflow train --agent lps --task cube-single-task2 --preset default --out runs/default --resume
	$(BIN)/python benchmarks/protocol/study.py compare runs/default

# The venv the reference implementations run in (benchmarks/parity/README.md).
reference-env: .venv-ref/.installed
.venv-ref/.installed: benchmarks/parity/requirements-reference.txt
	test -x .venv-ref/bin/python || $(PYTHON) -m venv .venv-ref
	.venv-ref/bin/pip install --quiet -r benchmarks/parity/requirements-reference.txt
	.venv-ref/bin/pip install --quiet --no-deps flaxmodels
	touch $@

# the whole suite: what CI runs (.ci/run), one pytest worker per core of a 2-core machine
# (TEST_WORKERS=1 runs it in one process); a test file stays on one worker (its module fixtures
# — a dataset cache, a Ray cluster — are built once), the files handed out longest first
# (tests/conftest.py's LONG_FIRST; xdist's own order is by number of tests)
TEST_WORKERS ?= 2
test: install
	MUJOCO_GL=egl $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# the fast tier while developing: every test not marked slow (pyproject.toml's `slow` marker)
test-fast: install
	MUJOCO_GL=egl $(BIN)/python -m pytest -q -m "not slow" tests

# the documentation site (mkdocs.yml; the test suite builds it with --strict)
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: install
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) runs site
