# mdegate — the two quick-start commands, plus benchmarks.
.PHONY: run test bench build clean

## Build, then run the MDE simulator and the gateway (config/local.yaml) in the foreground.
run:
	scripts/run-local.sh

## Install what the build needs (apt), build, and run every test.
test:
	scripts/test.sh

## Measure the quota figures (DESIGN.md's performance targets) in a release build.
bench:
	scripts/install-deps.sh
	swift build -c release
	$$(swift build -c release --show-bin-path)/mdegate-bench burst
	$$(swift build -c release --show-bin-path)/mdegate-bench latency

build:
	scripts/install-deps.sh
	swift build

clean:
	rm -rf .build run
