#!/usr/bin/env bash
# Installs the Debian 12 packages loom needs to build and test (idempotent).
set -euo pipefail
packages=(cmake ninja-build gcc pkg-config libopenblas-openmp-dev libjansson-dev libyaml-dev
          libopenmpi-dev openmpi-bin zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
