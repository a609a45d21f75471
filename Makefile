# gtm: the two set-up commands are `make demo` and `make test`; each builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench soak lint clean services drill-providers drill-anycast

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

## demo: the zero-setup demo (embedded store, simulated fleets, real DNS queries), ending with a drain drill
demo: $(STAMP)
	$(BIN)/gtm demo

## drill-providers: one failover published to embedded DNS, BIND and moto's Route 53, read back from each
drill-providers: $(STAMP) services
	$(BIN)/gtm drill providers

## drill-anycast: a fleet failure and a drain through ExaBGP (one per region) to a BIRD 2 router on loopback
drill-anycast: $(STAMP) services
	$(BIN)/gtm drill anycast

## services: install/start the real components the tests need (redis-server, BIND 9, BIRD 2, Unbound, Chromium, Prometheus, ...)
services:
	bash scripts/ensure-services.sh
	bash scripts/ensure-bind.sh
	bash scripts/ensure-bird.sh
	bash scripts/ensure-unbound.sh
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-prometheus.sh

## test: lint + the whole suite against real Redis, real DNS sockets and real processes
test: $(STAMP) services lint
	$(BIN)/gtm policy validate
	$(BIN)/gtm policy verify --max-rows 5
	GTM_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q -p no:cacheprovider

## test-fast: the developer loop, under a minute: every test but the end-to-end ones (tests/e2e/) and the
## slow ones (real servers, deliberate real-time waits: tests/conftest.py), property tests at 1/4 of their examples
test-fast: $(STAMP) services
	GTM_REQUIRE_SERVICES=1 GTM_HYPOTHESIS_SCALE=0.25 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not e2e and not slow"

## soak: the property tests with a fresh random search, 50x the examples (about 10 minutes)
soak: $(STAMP)
	GTM_HYPOTHESIS_PROFILE=soak GTM_HYPOTHESIS_SCALE=$${GTM_HYPOTHESIS_SCALE:-50} \
	  $(BIN)/python -m pytest -q -p no:cacheprovider --timeout 3600 \
	  tests/engine/test_engine_properties.py tests/providers/test_geo.py

## bench: performance benchmarks, then the false-positive run (10 minutes, every core busy with
## stress-ng; FP_DURATION=120 for a short one); writes bench/results/latest.json
FP_DURATION ?= 600
bench: $(STAMP) services
	bash scripts/ensure-stress-ng.sh
	$(BIN)/python -m bench.run --out bench/results/latest.json --fp-duration $(FP_DURATION)

## lint: ruff, the import-linter contracts (layers, pure engine) and mypy (strict for engine and models)
lint: $(STAMP)
	$(BIN)/ruff check gtm tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
