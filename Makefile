# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then run the main job on an embedded default
#   make test   set up .venv if needed, then lint and run the test suite
PY := .venv/bin/python

.PHONY: setup test lint demo bench results clean
setup:
	@bash scripts/setup.sh

lint: setup
	$(PY) -m ruff check davss_ros test launch scripts setup.py

test: setup
	$(PY) -m ruff check davss_ros test launch scripts setup.py
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

demo: setup
	$(PY) -m davss_ros.cli demo

bench: setup
	$(PY) -m davss_ros.cli bench

# Train the shipped model and the ablations (what is missing), export the model into the
# package and write docs/RESULTS.md and the results blocks of README and the model card:
# about six hours on 2 cores from nothing (scripts/results.sh; docs/RESULTS.md has the
# training times of the last run).
results: setup
	@bash scripts/results.sh

clean:
	rm -rf build out .pytest_cache .ruff_cache
