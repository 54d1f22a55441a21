#!/usr/bin/env bash
# `make bench`: the operator's memory, AWS calls, CPU per reconcile, start-up and time to Ready,
# measured against a fresh local control plane and moto and written to docs/BENCHMARKS.md (the
# driver is the ignored test `bench` in tests/bench.rs). Not part of `make test`; takes about
# 20 minutes on 2 cores (at most BENCH_MINUTES).
#
# Environment: BENCH_PROFILE (release, the default, or debug: the operator build measured),
# TINYSTACKS_BENCH_SIZES (default 1,100,1000), TINYSTACKS_BENCH_REPEATS (default 3),
# TINYSTACKS_BENCH_RESYNC (default 30s), BENCH_MINUTES (default 45: sizes that cannot be reached
# and measured in that time are skipped, and the document says so), TINYSTACKS_BENCH_TRACE (any
# value: print every AWS call and wait of each full-stack run, with its start and latency),
# TINYSTACKS_BENCH_WAIT_SCALE (default 1/30: the factor on AWS's typical waits for the time-to-Ready
# runs against them), BENCH_ONLY=waits (`make bench-waits`: only those runs, in a few minutes; the
# rest of the document is kept).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${TINYSTACKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinystacks-operator}
export TINYSTACKS_CACHE=$CACHE
export TINYSTACKS_STATE=${TINYSTACKS_BENCH_STATE:-$CACHE/bench-run}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
PROFILE=${BENCH_PROFILE:-release}

step() { printf '\n==> %s\n' "$*"; }

step "building the operator ($PROFILE) and the benchmark driver"
# The test build builds the debug binary too (with the dev-dependencies' features, as the
# integration tests run it); a plain `cargo build` would rebuild the AWS SDK without them.
cargo test --locked --test bench --no-run --quiet
if [[ $PROFILE == release ]]; then
  cargo build --locked --release --bin tinystacks-operator
fi

step "a fresh test environment (its own state dir: $TINYSTACKS_STATE)"
hack/testenv.sh down >/dev/null 2>&1 || true
env_file=$(hack/testenv.sh up)
trap 'hack/testenv.sh down >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC1090
source "$env_file"

# Versions for the document, as hack/testenv.sh pins them.
eval "$(grep -E '^(K8S|ETCD|MOTO)_VERSION=' hack/testenv.sh)"
export K8S_VERSION ETCD_VERSION MOTO_VERSION
export TINYSTACKS_BENCH_OPERATOR=$CARGO_TARGET_DIR/$PROFILE/tinystacks-operator
export TINYSTACKS_BENCH_PROFILE=$PROFILE
# With BENCH_PROFILE=debug, a release binary already built is measured too, briefly, at the end.
export TINYSTACKS_BENCH_RELEASE_OPERATOR=$CARGO_TARGET_DIR/release/tinystacks-operator
export TINYSTACKS_BENCH_OUT=$PWD/docs/BENCHMARKS.md
export TINYSTACKS_BENCH_DEADLINE=$(($(date +%s) + ${BENCH_MINUTES:-45} * 60))
export TINYSTACKS_BENCH_ONLY=${BENCH_ONLY:-}

step "running the benchmark (writes $TINYSTACKS_BENCH_OUT)"
cargo test --locked --test bench -- --ignored --nocapture bench
