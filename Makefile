# The two commands of the README, and a few helpers around them.
.PHONY: dev dev-down test test-long bench bench-waits testenv testenv-down crds

## Build what is missing, start a local control plane and moto, run the operator, apply the
## examples and show them settle. Stop everything with `make dev-down`.
dev:
	hack/dev.sh up

dev-down:
	hack/dev.sh down

## The whole test suite: fmt, clippy, unit and integration tests against the real environment.
test:
	hack/test.sh

## Only the environment (source the printed env file to use it).
testenv:
	hack/testenv.sh up

testenv-down:
	hack/testenv.sh down

## Regenerate the committed CRDs from the Rust types, and the Helm chart's copy of them (Helm
## installs CRDs only from a chart's own crds/ folder; tests/chart.rs checks the copy is identical).
crds:
	cargo run --quiet -- crds > crds/tinystacks.io.yaml
	cp crds/tinystacks.io.yaml charts/tinystacks-operator/crds/tinystacks.io.yaml

## The long tests (minutes each): the crash sweeps over every mutation (the whole lifecycle, a Stack alone), the
## 50-Stack scale run and the AWS-fault run.
test-long:
	hack/test.sh --ignored

## The benchmark (about 45 minutes; not part of `make test`): memory, AWS calls, CPU per reconcile,
## start-up and time to Ready against a fresh environment, written to docs/BENCHMARKS.md.
bench:
	hack/bench.sh

## Only the time to Ready against AWS's waits (a few minutes), spliced into docs/BENCHMARKS.md.
bench-waits:
	BENCH_ONLY=waits hack/bench.sh
