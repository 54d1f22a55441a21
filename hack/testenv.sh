#!/usr/bin/env bash
# The local test environment: a real etcd, kube-apiserver and kube-controller-manager built
# from the official Go module sources, helm, and a moto server, all on loopback; plus the kstatus
# helper (hack/kstatus) and lupa, which the GitOps health tests use.
#
#   hack/testenv.sh build   build whatever is missing into the cache (idempotent)
#   hack/testenv.sh up      build if needed, then start everything; writes $STATE/env and
#                           prints its path, so `source "$(hack/testenv.sh up)"` works
#   hack/testenv.sh down    stop everything started by `up`
#   hack/testenv.sh env     print the path of the env file to source
#   hack/testenv.sh status  say what runs (exit 1 unless everything does)
#
# TINYSTACKS_STATE picks the state dir (pids, logs, certificates, kubeconfig, env file), so
# several environments can run side by side. MOTO_INITIAL_NO_AUTH_ACTION_COUNT, when set,
# makes moto enforce IAM policies after that many requests.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
LUPA_VERSION=${LUPA_VERSION:-2.8}
# promtool, to check the PrometheusRule the chart ships (Prometheus v3.x is module v0.3xx).
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}

CACHE=${TINYSTACKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinystacks-operator}
BIN=$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION
VENV=$CACHE/moto-$MOTO_VERSION
LUPA_VENV=$CACHE/lupa-$LUPA_VERSION
# The kstatus helper's sources (its go.mod pins sigs.k8s.io/cli-utils).
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KSTATUS_SRC=$HACK/kstatus
# moto's server with its EC2 tag lookup indexed (hack/moto_server.py says why), copied into the
# venv at each build so that the command line of a running moto names no clone.
MOTO_SERVER=$VENV/bin/tinystacks-moto-server
STATE=${TINYSTACKS_STATE:-$CACHE/run}
# The env file and pid files outlive the caller's working directory.
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac

log() { printf '[testenv] %s\n' "$*" >&2; }

# Prints N (default 1) distinct free loopback ports; the sockets stay open until all are
# chosen so that the same port cannot come back twice.
free_port() {
  python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))' "${1:-1}"
}

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kubectl) missing=0 b
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing=1; done
  [ $missing = 1 ] || return 0
  log "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (first time: tens of minutes)"
  local dir=$CACHE/src/k8s-$K8S_VERSION
  mkdir -p "$dir" "$BIN"
  local gomod
  gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  {
    echo "module tinystacks.io/testenv/kubernetes"
    echo
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Every staging module the upstream go.mod points at a local path, pinned instead to the
    # version published for this release.
    sed -n -E 's#^[[:space:]]*(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+$#\t\1 => \1 v0.'"$minor"'.'"${K8S_VERSION##*.}"'#p' "$gomod"
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  local ld=""
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$dir"
    GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ld" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl
  )
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return 0
  log "building etcd $ETCD_VERSION"
  local dir=$CACHE/src/etcd-$ETCD_VERSION
  mkdir -p "$dir" "$BIN"
  cat > "$dir/go.mod" <<GOMOD
module tinystacks.io/testenv/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
GOMOD
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (
    cd "$dir"
    GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  )
}

build_helm() {
  [ -x "$BIN/helm" ] && return 0
  log "building helm $HELM_VERSION"
  local dir=$CACHE/src/helm-$HELM_VERSION
  mkdir -p "$dir"
  GOBIN="$dir" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  cp "$dir/helm" "$BIN/helm"
}

build_moto() {
  if [ ! -x "$VENV/bin/moto_server" ]; then
    log "installing moto[server]==$MOTO_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  fi
  { printf '#!%s\n' "$VENV/bin/python3"; cat "$HACK/moto_server.py"; } >"$MOTO_SERVER.tmp"
  chmod +x "$MOTO_SERVER.tmp"
  mv -f "$MOTO_SERVER.tmp" "$MOTO_SERVER"
}

# kstatus: the real kstatus library in a tiny program, for the GitOps health tests. Rebuilt when
# its sources change (the stamp holds their checksum), which the versioned $BIN name cannot tell.
build_kstatus() {
  local sum
  sum=$(cat "$KSTATUS_SRC/go.mod" "$KSTATUS_SRC/go.sum" "$KSTATUS_SRC/main.go" | sha256sum)
  sum=${sum%% *}
  if [ -x "$BIN/kstatus" ] && [ "$(cat "$BIN/kstatus.sum" 2>/dev/null)" = "$sum" ]; then return 0; fi
  log "building kstatus (sigs.k8s.io/cli-utils as pinned in hack/kstatus/go.mod)"
  mkdir -p "$BIN"
  (
    cd "$KSTATUS_SRC"
    GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/kstatus" .
  )
  echo "$sum" >"$BIN/kstatus.sum"
}

# promtool: `promtool check rules` on charts/tinystacks-operator/files/prometheus-rules.yaml.
# From the Go module proxy, pinned; the version is part of the cached binary's name, since $BIN's
# name does not carry it. Prometheus's module is large (its service discoveries pull in cloud
# SDKs): the first build takes minutes.
build_promtool() {
  local out=$BIN/promtool-$PROMETHEUS_MODULE_VERSION
  if [ -x "$out" ]; then ln -sf "$(basename "$out")" "$BIN/promtool"; return 0; fi
  log "building promtool (github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION; first time: minutes)"
  local dir=$CACHE/src/promtool-$PROMETHEUS_MODULE_VERSION
  mkdir -p "$dir" "$BIN"
  GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
  cp "$dir/promtool" "$out"
  ln -sf "$(basename "$out")" "$BIN/promtool"
}

# lupa: Lua 5.1 (the Lua of Argo CD's health checks) from Python, to test the chart's Argo CD
# health check. `lupa-python` lands in $BIN, which the env file puts on PATH.
build_lupa() {
  if [ -x "$BIN/lupa-python" ] && "$BIN/lupa-python" -c 'import lupa.lua51' 2>/dev/null; then return 0; fi
  log "installing lupa==$LUPA_VERSION into $LUPA_VENV"
  python3 -m venv "$LUPA_VENV"
  "$LUPA_VENV/bin/pip" install --quiet --disable-pip-version-check "lupa==$LUPA_VERSION"
  mkdir -p "$BIN"
  printf '#!/usr/bin/env bash\n# Python with lupa %s, for the Argo CD health check tests.\nexec %q "$@"\n' \
    "$LUPA_VERSION" "$LUPA_VENV/bin/python" >"$BIN/lupa-python"
  chmod +x "$BIN/lupa-python"
}

cmd_build() {
  build_moto
  build_lupa
  build_etcd
  build_helm
  build_kubernetes
  build_kstatus
  build_promtool
  log "binaries in $BIN"
}

# ---------------------------------------------------------------------------------------------
# Running the environment

# Start order; `down` stops them in reverse so no component loses its backend while running.
COMPONENTS=(etcd kube-apiserver moto kube-controller-manager)

PKI=$STATE/pki
ENV_FILE=$STATE/env
KUBECONFIG_FILE=$STATE/kubeconfig
PORTS_FILE=$STATE/ports

# Seconds each component gets to become healthy; generous because the machine may be busy
# compiling at the same time.
ETCD_TIMEOUT=60
APISERVER_TIMEOUT=180
MOTO_TIMEOUT=90
CONTROLLER_MANAGER_TIMEOUT=120
STOP_TIMEOUT=10

# The path that must appear in a process's command line for it to count as ours, so that a
# recycled pid is never signalled.
component_exe() {
  case $1 in
    moto) echo "$MOTO_SERVER" ;;
    *) echo "$BIN/$1" ;;
  esac
}

# Prints the pid of the component if the process recorded by `up` still lives.
component_pid() {
  local f=$STATE/pids/$1.pid pid stat cmdline
  [ -s "$f" ] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  # A zombie still answers kill -0 but is gone for our purposes.
  [[ ${stat##*) } != Z* ]] || return 1
  cmdline=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $'\n'$cmdline$'\n' == *$'\n'"$(component_exe "$1")"$'\n'* ]] || return 1
  echo "$pid"
}

# launch NAME COMMAND...: starts COMMAND detached, logging to $STATE/logs/NAME.log.
launch() {
  local name=$1 i
  shift
  local pidf=$STATE/pids/$name.pid
  rm -f "$pidf"
  # setsid: the daemons outlive this script and the caller's terminal, and each leads its own
  # process group for `down` to signal. The child records its own pid before exec, as setsid
  # may fork. fd 9 holds the state lock and must not stay open in a daemon. The subshell
  # makes init the parent, and the state dir the working directory, of every daemon.
  (
    cd "$STATE"
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidf" "$@" \
      </dev/null >"$STATE/logs/$name.log" 2>&1 9>&- &
  )
  for i in $(seq 100); do
    [ -s "$pidf" ] && return 0
    sleep 0.05
  done
  fail "$name" "did not start"
}

stop_component() {
  local name=$1 pid i
  if pid=$(component_pid "$name"); then
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      component_pid "$name" >/dev/null || break
      sleep 0.1
    done
    if component_pid "$name" >/dev/null; then
      log "$name did not stop within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        component_pid "$name" >/dev/null || break
        sleep 0.1
      done
    fi
    STOPPED_PIDS+=("$pid")
  fi
  rm -f "$STATE/pids/$name.pid"
}

stop_all() {
  local i pid left
  STOPPED_PIDS=()
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${COMPONENTS[i]}"
  done
  # init reaps its orphans only every couple of seconds here; waiting for that once, for all,
  # keeps zombies out of a pgrep right after `down`.
  for ((i = 0; i < 50; i++)); do
    left=0
    for pid in "${STOPPED_PIDS[@]}"; do
      if [ -e "/proc/$pid" ]; then left=1; fi
    done
    ((left)) || break
    sleep 0.1
  done
  rm -f "$ENV_FILE" "$KUBECONFIG_FILE" "$PORTS_FILE"
}

# fail NAME MESSAGE: reports a component that did not come up, with its log, and stops
# everything so that no half-started environment is left behind.
fail() {
  local name=$1 msg=$2 f=$STATE/logs/$1.log
  log "ERROR: $name $msg"
  if [ -s "$f" ]; then
    log "last lines of $f:"
    tail -n 40 "$f" | sed 's/^/    /' >&2
  fi
  stop_all
  exit 1
}

# wait_until NAME SECONDS WHAT CHECK...: polls CHECK until it passes, the component exits, or
# the deadline is reached.
wait_until() {
  local name=$1 secs=$2 what=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@"; do
    component_pid "$name" >/dev/null || fail "$name" "exited before it was $what"
    ((SECONDS < deadline)) || fail "$name" "was not $what within ${secs}s"
    sleep 0.25
  done
}

admin_curl() {
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}
etcd_healthy() {
  [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null) == *'"health":"true"'* ]]
}
apiserver_ready() { [[ $(admin_curl /readyz) == ok ]]; }
# moto's own dashboard, not `/`: any AWS-style request, even an unsigned one, counts against
# INITIAL_NO_AUTH_ACTION_COUNT and would shift when IAM enforcement starts for the tests.
moto_answers() { curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null; }
# The service account controller filling the default namespace proves that the controller
# manager reached the API server and runs its controllers.
default_serviceaccount_exists() {
  admin_curl /api/v1/namespaces/default/serviceaccounts/default >/dev/null
}

# A running environment is reused only if every process lives, answers, and was started with
# the same binaries and moto settings as this call asks for.
environment_healthy() {
  local c
  [ -f "$PORTS_FILE" ] && [ -f "$ENV_FILE" ] && [ -f "$KUBECONFIG_FILE" ] || return 1
  # shellcheck source=/dev/null
  . "$PORTS_FILE"
  [ "$RUN_BIN" = "$BIN" ] && [ "$RUN_VENV" = "$VENV" ] || return 1
  [ "$RUN_MOTO_NO_AUTH" = "${MOTO_INITIAL_NO_AUTH_ACTION_COUNT:-}" ] || return 1
  for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null || return 1; done
  etcd_healthy && apiserver_ready && moto_answers
}

# The CA, the admin client certificate, the API server's serving certificate and the service
# account key pair. Kept across runs: generating them is the slowest part of a warm start
# after the API server itself, and nothing signed by them survives a run anyway.
ensure_pki() {
  [ -f "$PKI/.complete" ] && return 0
  log "generating certificates in $PKI"
  rm -rf "$PKI"
  mkdir -p "$PKI"
  (
    cd "$PKI"
    umask 077
    cat >ext.cnf <<'CNF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:10.0.0.1
CNF
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -new -key ca.key -subj "/CN=tinystacks-testenv-ca" -out ca.csr
    openssl x509 -req -in ca.csr -signkey ca.key -days 3650 -extfile ext.cnf -extensions ca \
      -out ca.crt 2>/dev/null
    local name subj ext
    for name in admin apiserver; do
      case $name in
        admin) subj="/O=system:masters/CN=tinystacks-admin" ext=client ;;
        apiserver) subj="/CN=kube-apiserver" ext=server ;;
      esac
      openssl genrsa -out "$name.key" 2048 2>/dev/null
      openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile ext.cnf -extensions "$ext" -out "$name.crt" 2>/dev/null
    done
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr
    touch .complete
  )
}

write_kubeconfig() {
  local tmp=$KUBECONFIG_FILE.tmp
  (
    umask 077
    cat >"$tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: tinystacks-testenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: tinystacks-admin
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/admin.crt")
    client-key-data: $(base64 -w0 <"$PKI/admin.key")
contexts:
- name: tinystacks-testenv
  context:
    cluster: tinystacks-testenv
    user: tinystacks-admin
current-context: tinystacks-testenv
KUBECONFIG
  )
  mv "$tmp" "$KUBECONFIG_FILE"
}

write_env() {
  local tmp=$ENV_FILE.tmp moto_url="http://127.0.0.1:$MOTO_PORT"
  {
    echo "# Written by hack/testenv.sh up; source it to use this test environment."
    printf 'export TINYSTACKS_STATE=%q\n' "$STATE"
    printf 'export TINYSTACKS_TESTENV_BIN=%q\n' "$BIN"
    printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
    printf 'export MOTO_URL=%q\n' "$moto_url"
    printf 'export AWS_ENDPOINT_URL=%q\n' "$moto_url"
    echo "export AWS_ACCESS_KEY_ID=testing"
    echo "export AWS_SECRET_ACCESS_KEY=testing"
    echo "export AWS_REGION=us-east-1"
    echo "export AWS_DEFAULT_REGION=us-east-1"
    # Left over from a real account, these would override the fake keys above.
    echo "unset AWS_SESSION_TOKEN AWS_PROFILE"
    # First, so the kubectl and helm that match the API server win over any on the machine.
    # shellcheck disable=SC2016 # $PATH is expanded when the file is sourced
    printf 'export PATH=%q:"$PATH"\n' "$BIN"
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
}

# Serialises up and down on one state dir: two test runs racing to start the same
# environment would otherwise each kill the other's processes.
lock_state() {
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock -w 900 9 || {
    log "ERROR: another hack/testenv.sh holds $STATE/lock"
    exit 1
  }
}

cmd_up() {
  cmd_build >&2
  lock_state
  if environment_healthy; then
    log "already running; env file:"
    echo "$ENV_FILE"
    return 0
  fi
  local started=$SECONDS
  # The daemons run in sessions of their own, so an interrupted start would leave them behind.
  trap 'log "interrupted"; stop_all; exit 130' INT TERM
  # Whatever is left from an earlier run (dead or half-started) goes; tests want a clean
  # cluster, so etcd's data goes with it.
  stop_all
  rm -rf "$STATE/etcd" "$STATE/pids" "$STATE/logs"
  mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/apiserver"
  ensure_pki

  local ports
  read -r -a ports <<<"$(free_port 4)"
  ETCD_PORT=${ports[0]} ETCD_PEER_PORT=${ports[1]} APISERVER_PORT=${ports[2]} MOTO_PORT=${ports[3]}

  # Moto imports slowly; starting it first lets it load while etcd and the API server start.
  local moto_env=(env -u INITIAL_NO_AUTH_ACTION_COUNT PYTHONUNBUFFERED=1)
  if [ -n "${MOTO_INITIAL_NO_AUTH_ACTION_COUNT:-}" ]; then
    moto_env+=("INITIAL_NO_AUTH_ACTION_COUNT=$MOTO_INITIAL_NO_AUTH_ACTION_COUNT")
  fi
  launch moto "${moto_env[@]}" "$MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT"

  # --initial-cluster must name the peer URL, or etcd refuses a non-default one.
  launch etcd "$BIN/etcd" \
    --name=default \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true
  wait_until etcd "$ETCD_TIMEOUT" healthy etcd_healthy

  # The serving certificate is ours, signed by the CA in the kubeconfig, so clients verify
  # the server instead of skipping TLS checks. The ServiceAccount admission plugin stays on
  # (the default set); the controller manager creates the accounts it expects. No endpoint
  # reconciler: it would publish 127.0.0.1 as the endpoint of the `kubernetes` Service, which
  # validation rejects as loopback, every 10 s; nothing here routes to that Service anyway.
  launch kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --cert-dir="$STATE/apiserver" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --secure-port="$APISERVER_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --allow-privileged=true \
    --endpoint-reconciler-type=none
  wait_until kube-apiserver "$APISERVER_TIMEOUT" ready apiserver_ready
  write_kubeconfig

  launch kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller \
    --leader-elect=false \
    --secure-port=0 \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=false
  wait_until moto "$MOTO_TIMEOUT" answering moto_answers
  wait_until kube-controller-manager "$CONTROLLER_MANAGER_TIMEOUT" \
    "creating the default ServiceAccount" default_serviceaccount_exists

  {
    printf 'ETCD_PORT=%q\nAPISERVER_PORT=%q\nMOTO_PORT=%q\n' "$ETCD_PORT" "$APISERVER_PORT" "$MOTO_PORT"
    printf 'RUN_BIN=%q\nRUN_VENV=%q\n' "$BIN" "$VENV"
    printf 'RUN_MOTO_NO_AUTH=%q\n' "${MOTO_INITIAL_NO_AUTH_ACTION_COUNT:-}"
  } >"$PORTS_FILE"
  write_env
  trap - INT TERM
  log "up in $((SECONDS - started))s: API server https://127.0.0.1:$APISERVER_PORT, moto http://127.0.0.1:$MOTO_PORT, logs in $STATE/logs; env file:"
  echo "$ENV_FILE"
}

cmd_down() {
  lock_state
  stop_all
  log "stopped (logs kept in $STATE/logs)"
}

cmd_env() {
  if [ ! -f "$ENV_FILE" ]; then
    log "ERROR: no environment is up in $STATE; run hack/testenv.sh up"
    exit 1
  fi
  echo "$ENV_FILE"
}

cmd_status() {
  local c pid all=0 where
  ETCD_PORT='' APISERVER_PORT='' MOTO_PORT=''
  # shellcheck source=/dev/null
  [ -f "$PORTS_FILE" ] && . "$PORTS_FILE"
  for c in "${COMPONENTS[@]}"; do
    case $c in
      etcd) where=${ETCD_PORT:+http://127.0.0.1:$ETCD_PORT} ;;
      kube-apiserver) where=${APISERVER_PORT:+https://127.0.0.1:$APISERVER_PORT} ;;
      moto) where=${MOTO_PORT:+http://127.0.0.1:$MOTO_PORT} ;;
      *) where='' ;;
    esac
    if pid=$(component_pid "$c"); then
      printf '%-24s running  pid %-8s %s\n' "$c" "$pid" "$where" | sed 's/ *$//'
    else
      printf '%-24s stopped\n' "$c"
      all=1
    fi
  done
  if [ -f "$ENV_FILE" ]; then echo "env file: $ENV_FILE"; fi
  return $all
}

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"
}

case ${1:-build} in
  build | up | down | env | status) "cmd_${1:-build}" "${@:2}" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
