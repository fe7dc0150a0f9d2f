#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a trained model: installs the dependencies,
# builds loom, trains a small GPT on the example dataset that ships with the repo on 4 devices
# (2 copies of the model, each split tensor-parallel over 2 ranks), and samples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build
./build/loom train --model gpt2 --layers 4 --embd 128 --heads 4 --ctx 128 \
    --data examples/data/licenses.txt --steps 800 --batch 8 --seq 128 --lr 3e-3 \
    --devices 4 --plan-devices 2 --policy tp \
    --save out/gpt2-licenses --sample 300 --prompt "This License"
