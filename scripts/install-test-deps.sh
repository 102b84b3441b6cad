#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks use, only when missing (Debian packages, PyPI).
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
# setpriv runs meshd as its own user in the capture tests and the lab (util-linux on Debian 12).
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# scripts/build-release.sh strips the shipped binaries (objcopy, strip, readelf).
{ command -v objcopy >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1; } || need+=(binutils)
# The allocation-budget test builds its malloc-counting interposer with a C compiler.
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 || need+=(gcc)
# meshctl top and tap are driven in a real terminal (tests/e2e/test_meshctl_live.py).
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# A real Prometheus (server and promtool) scrapes meshd in tests/e2e/test_prometheus.py.
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# nginx/dnsmasq/prometheus packages may start system services; the tests run their own instances.
if command -v service >/dev/null 2>&1; then
  service nginx stop >/dev/null 2>&1 || true
  service dnsmasq stop >/dev/null 2>&1 || true
  service prometheus stop >/dev/null 2>&1 || true
fi

python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
# WebSocket peer for the protocol tests; gRPC peers and an HTTP/2 client for test_grpc.py.
python3 -c 'import websockets, kubernetes_validate, yaml, grpc, grpc_tools, h2' 2>/dev/null || python3 -m pip install -q -r tests/e2e/requirements.txt
