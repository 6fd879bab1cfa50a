# Two commands set everything up: `make run` (the default job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test clean

install: $(STAMP)

# Re-installs only when the package metadata changes (idempotent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Default job: LPS on cube-single-task2 (data generated on first use), prints the final success.
run: install
	MUJOCO_GL=egl $(BIN)/steerflow train --agent lps --task cube-single-task2 --preset default --out runs/default

test: install
	MUJOCO_GL=egl $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
