#!/usr/bin/env bash
# Optional interop suite (needs PyPI): real Hugging Face transformers against the PyTorch oracle
# fixtures and against directories written by loom (--save, --save-sharded + merge).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
for p in python3-torch python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$p"
done
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build
venv=build/interop-venv
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"   # Debian's torch stays visible
    "$venv/bin/pip" install -q "transformers==4.40.2" safetensors
fi
LOOM="$PWD/build/loom" "$venv/bin/python" tests/interop/check_hf.py
