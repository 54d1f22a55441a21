#!/usr/bin/env bash
# The whole test suite (README command 2, and what CI runs): formatting and lints, then the
# unit and integration tests against a real control plane and moto started for the run and
# stopped afterwards. Builds what is missing; caches it outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${TINYSTACKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinystacks-operator}
export TINYSTACKS_CACHE=$CACHE
# Its own state dir, so a `make dev` environment keeps running beside the tests.
export TINYSTACKS_STATE=${TINYSTACKS_TEST_STATE:-$CACHE/test-run}
# The cargo target dir outlives fresh clones (CI clones anew each run).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

step() { printf '\n==> %s\n' "$*"; }

step "formatting"
cargo fmt --all -- --check

# The test environment's binaries (Kubernetes, etcd, helm and moto from source; ~15 minutes the
# first time, nothing once cached) build while cargo compiles: on a cold machine the two
# together take about as long as the longer one.
mkdir -p "$CACHE"
build_log=$CACHE/testenv-build.log
# In a session of its own, so that leaving early (a lint failing, Ctrl-C) stops the Go compilers too.
setsid hack/testenv.sh build >"$build_log" 2>&1 &
build_pid=$!
trap 'kill -- -"$build_pid" 2>/dev/null || true' EXIT

step "lints"
cargo clippy --all-targets --locked -- -D warnings

step "test environment"
if ! wait "$build_pid"; then
  tail -n 40 "$build_log" >&2
  echo "building the test environment failed; the whole log is $build_log" >&2
  exit 1
fi
env_file=$(hack/testenv.sh up)
trap 'hack/testenv.sh down >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC1090
source "$env_file"

step "unit and integration tests"
# Every operator the tests start logs here, with what it left in the cluster; the secret scan
# below reads it all (tests/common/secrets.rs).
rm -rf "$TINYSTACKS_STATE/operator-logs" "$TINYSTACKS_STATE/generated-secrets.jsonl"
# `hack/test.sh --ignored` (make test-long) runs only the long tests instead.
cargo test --locked --all-targets -- --test-threads "${TEST_THREADS:-4}" "$@"

step "secret scan: no generated password or private key in any log, Event, status or condition"
cargo test --locked --test secret_scan -- --ignored --exact \
  no_generated_secret_in_any_log_event_status_or_condition_of_the_suite
