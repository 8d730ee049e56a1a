#!/usr/bin/env bash
# Install what the farm tests (tests/farm) need, from Debian's packages: Slurm 22.05, munge, dnsmasq,
# iptables and iproute2; promtool (Debian's prometheus 2.42) for tests/test_prometheus_rules.py; node and npm, and
# the pinned CRD schema validators of tests/k8s-crd-schemas (npm ci) for tests/test_kubernetes.py.
# Idempotent: when everything is present it only checks and returns.
# Needs root and apt-get; on any other machine it says so and exits 1.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have slurmctld || need+=(slurmctld)
have slurmd || need+=(slurmd)
have sbatch || need+=(slurm-client)
have munged || need+=(munge)
have dnsmasq || need+=(dnsmasq-base)
have iptables || need+=(iptables)
have ip || need+=(iproute2)
have nsenter || need+=(util-linux)
have promtool || need+=(prometheus)
have node || need+=(nodejs)
have npm || need+=(npm)
crd_schemas="$(cd "$(dirname "$0")/.." && pwd)/tests/k8s-crd-schemas"
crd_validators() {
  if [ -d "$crd_schemas/node_modules" ]; then return 0; fi
  echo "farm-deps: npm ci in $crd_schemas"
  (cd "$crd_schemas" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
}
if [ ${#need[@]} -eq 0 ]; then
  crd_validators
  echo "farm-deps: all present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "farm-deps: missing ${need[*]}; run as root (apt-get install -y ${need[*]})" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "farm-deps: missing ${need[*]} and no apt-get here; install Slurm 22.05, munge, dnsmasq, iptables by hand" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "farm-deps: installing ${need[*]}"
timeout 300 apt-get update -qq
timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "farm-deps: installed ${need[*]}"
crd_validators
