# The README's two commands: `make run` and `make test`.
DATASET ?= ml-100k
SERVE ?= 1
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: run test setup clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/recstack run --dataset $(DATASET) --serve $(SERVE)

test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs triton_repo/*/
