# The two Quick start commands are `make run` and `make test`; each sets itself up on a fresh machine.
.PHONY: run test lint bench setup clean

CONFIG ?= collector.yaml

run:
	@scripts/setup.sh
	.venv/bin/iot-collector run -c $(CONFIG)

test:
	@scripts/setup.sh --test
	.venv/bin/python -m pytest -q

lint:
	@scripts/setup.sh --test
	.venv/bin/ruff check collector tests bench
	.venv/bin/mypy

bench:
	@scripts/setup.sh --test
	for b in bench/bench_*.py; do .venv/bin/python $$b || exit 1; done

clean:
	rm -rf .venv state .pytest_cache .mypy_cache .ruff_cache
