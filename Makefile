.PHONY: run test bench
run:   ## the driver as a host service on the embedded store
	scripts/run
test:  ## the whole suite (unit, protocol, netns, e2e on dockerd 20.10 and 28.5)
	scripts/test
bench: ## side-by-side benchmarks against Docker's built-in bridge
	scripts/bench
