# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run user test lint bench install install-dev install-ray clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -r requirements-dev.txt
	touch $@

# Optional Ray Data batch scoring (`python -m xray predict ... --ray`): tests need it, the app does not.
$(VENV)/.ray: requirements-ray.txt $(VENV)/.runtime
	$(BIN)/pip install -r requirements-ray.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev $(VENV)/.ray
install-ray: $(VENV)/.ray

## Start the app on the bundled model with a local SQLite file in ./data
run: install
	$(BIN)/python app.py

## Create a doctor account for the app (prompts for the password): make user NAME=alice
user: install
	@test -n "$(NAME)" || { echo "usage: make user NAME=<sign-in name>"; exit 2; }
	$(BIN)/python -m xray users add $(NAME)

## Run the whole test suite offline
test: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .

## Model-only speed per architecture, what one Diagnose upload costs stage by stage, then training images/s
bench: install
	$(BIN)/python -m xray.bench
	$(BIN)/python -m xray.bench_request
	$(BIN)/python -m xray.bench --train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
