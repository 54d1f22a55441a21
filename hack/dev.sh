#!/usr/bin/env bash
# README command 1: the operator working on the embedded default, on this machine.
#   hack/dev.sh up     build what is missing, start the control plane and moto, install the
#                      CRDs, run the operator, apply examples/ and show the objects settle
#   hack/dev.sh down   stop the operator and the environment
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${TINYSTACKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinystacks-operator}
export TINYSTACKS_CACHE=$CACHE
export TINYSTACKS_STATE=${TINYSTACKS_STATE:-$CACHE/run}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
OPERATOR_NS=tinystacks-system
PIDFILE=$TINYSTACKS_STATE/pids/operator
LOG=$TINYSTACKS_STATE/logs/operator.log
SETTLE_SECONDS=${SETTLE_SECONDS:-90}

step() { printf '\n==> %s\n' "$*"; }

stop_operator() {
  if [[ -f $PIDFILE ]]; then
    local pid
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
}

cmd_down() {
  stop_operator
  hack/testenv.sh down
}

# A free loopback port, so that several environments (TINYSTACKS_STATE) can run side by side.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# On a failure after the environment was started by this run: stop the operator and that
# environment, so that a failed `make dev` leaves nothing running.
cleanup_on_failure() {
  local status=$?
  [[ $status -eq 0 ]] && return
  printf '\n==> failed (exit %s); stopping what this run started\n' "$status" >&2
  stop_operator
  [[ ${STARTED_ENV:-0} == 1 ]] && hack/testenv.sh down >&2 || true
}

cmd_up() {
  trap cleanup_on_failure EXIT
  step "building the operator (first time: about 10 minutes on 2 cores; cargo shows its progress)"
  cargo build --locked
  local bin=$CARGO_TARGET_DIR/debug/tinystacks-operator

  step "starting the control plane and moto (first run builds Kubernetes from source: about 10 more minutes)"
  STARTED_ENV=0
  hack/testenv.sh status >/dev/null 2>&1 || STARTED_ENV=1
  local env_file
  env_file=$(hack/testenv.sh up)
  # shellcheck disable=SC1090
  source "$env_file"

  step "installing the CRDs"
  "$bin" crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
  kubectl wait --for=condition=Established --timeout=60s crd \
    awsaccountlinks.tinystacks.io stacks.tinystacks.io databases.tinystacks.io bastions.tinystacks.io

  step "the operator's namespace and the account link's bootstrap credentials (moto's)"
  kubectl create namespace "$OPERATOR_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$OPERATOR_NS" create secret generic sandbox-bootstrap \
    --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null

  local metrics_addr=${TINYSTACKS_METRICS_ADDR:-127.0.0.1:$(free_port)}
  step "running the operator (log: $LOG; metrics: http://$metrics_addr/metrics)"
  stop_operator
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
  TINYSTACKS_NAMESPACE=$OPERATOR_NS TINYSTACKS_RESYNC_PERIOD=${TINYSTACKS_RESYNC_PERIOD:-30s} \
    TINYSTACKS_METRICS_ADDR=$metrics_addr \
    nohup "$bin" run >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  # Up when /readyz answers; an operator that exits instead says why in its log.
  local up=0
  for _ in $(seq 50); do
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    if curl -fsS "http://$metrics_addr/readyz" >/dev/null 2>&1; then up=1; break; fi
    sleep 0.2
  done
  [[ $up == 1 ]] || { tail -n 20 "$LOG"; exit 1; }

  step "applying examples/"
  kubectl apply -f examples/

  step "watching the objects settle (up to ${SETTLE_SECONDS}s)"
  local previous="" current="" shape="" stable=0
  for _ in $(seq "$SETTLE_SECONDS"); do
    current=$(kubectl get tinystacks -A 2>/dev/null || true)
    # Compared without the AGE column, which changes every second.
    shape=$(sed -E 's/[[:space:]]+[0-9smhd]+$//' <<<"$current")
    if [[ $shape != "$previous" ]]; then
      printf '\n%s\n' "$current"
      previous=$shape stable=0
    else
      stable=$((stable + 1))
    fi
    # Done when nothing is False or Unknown any more, or nothing has moved for 15 s.
    if [[ -n $current ]] && ! grep -qE ' (False|Unknown) ' <<<"$current"; then break; fi
    [[ $stable -ge 15 ]] && break
    sleep 1
  done

  step "conditions"
  kubectl get tinystacks -A -o go-template='{{range .items}}{{.kind}} {{with .metadata.namespace}}{{.}}/{{end}}{{.metadata.name}}{{"\n"}}{{range .status.conditions}}  {{.type}}={{.status}} {{.reason}}{{with .message}}: {{.}}{{end}}{{"\n"}}{{end}}{{end}}'

  trap - EXIT
  cat <<EOF

The operator keeps running (metrics: http://$metrics_addr/metrics). To use the cluster:   source $env_file
Operator log:                                   $LOG
Stop everything:                                make dev-down
EOF
}

"cmd_${1:-up}"
