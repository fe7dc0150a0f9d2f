#!/usr/bin/env python3
"""Optional interop suite: real Hugging Face `transformers` against loom's files.

1. The PyTorch oracle fixtures (tests/data/oracle/*, whose math tests/oracle re-implements)
   load in transformers and give the recorded logits and loss: the oracle is the real thing.
2. Directories written by `loom train --save` and `loom merge` load in transformers with no
   missing or unexpected weights and give the same logits as loom's source weights.

    scripts/interop.sh          # makes a venv with transformers + safetensors, runs this

Needs: torch (Debian python3-torch), transformers (4.40 works with torch 1.13), safetensors.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORACLE = os.path.join(ROOT, "tests", "data", "oracle")
LOOM = os.environ.get("LOOM", os.path.join(ROOT, "build", "loom"))
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    failures += 0 if cond else 1


def load(path):
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    return model


def logits_of(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def check_oracle(name):
    d = os.path.join(ORACLE, name)
    exp = load_file(os.path.join(d, "expected.safetensors"))
    model = load(d)
    tokens = exp["tokens"].long()
    logits = logits_of(model, tokens)
    err = rel_err(logits, exp["logits"])
    check(err < 1e-5, f"{name}: transformers logits vs the oracle fixture, rel err {err:.2e}")
    targets = exp["targets"].long()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1),
                                             ignore_index=-100)
    check(abs(loss.item() - exp["loss"].item()) < 1e-5 * abs(exp["loss"].item()),
          f"{name}: loss {loss.item():.6f} vs {exp['loss'].item():.6f}")
    return model, tokens


def check_loom_written(name, model, tokens, tmp):
    """loom --save (steps 0: the weights unchanged) and a sharded save + merge must load in
    transformers strictly and give the source model's logits."""
    src = os.path.join(ORACLE, name)
    data = os.path.join(tmp, "data.txt")
    with open(data, "w") as f:
        f.write("".join(chr(32 + (i * 7) % 60) for i in range(4000)))
    saved, shards, merged = (os.path.join(tmp, name + s) for s in ("-saved", "-shards", "-merged"))
    small = ["--batch", "2", "--seq", "16"]
    subprocess.run([LOOM, "train", "--model-dir", src, "--data", data, "--steps", "0",
                    "--save", saved] + small, check=True, capture_output=True)
    subprocess.run([LOOM, "train", "--model-dir", src, "--data", data, "--steps", "0",
                    "--devices", "2", "--policy", "tp", "--save-sharded", shards] + small,
                   check=True, capture_output=True)
    subprocess.run([LOOM, "merge", shards, merged], check=True, capture_output=True)
    want = logits_of(model, tokens)
    for label, path in (("loom --save", saved), ("loom merge", merged)):
        got_model, info = AutoModelForCausalLM.from_pretrained(
            path, torch_dtype=torch.float32, output_loading_info=True)
        got_model.eval()
        missing = [k for k in info["missing_keys"] if "lm_head" not in k]  # tied heads are fine
        check(not missing and not info["unexpected_keys"],
              f"{name}: {label} loads strictly (missing {missing}, unexpected "
              f"{info['unexpected_keys']})")
        err = rel_err(logits_of(got_model, tokens), want)
        check(err == 0.0, f"{name}: {label} logits equal the source's (rel err {err:.1e})")
        with open(os.path.join(path, "config.json")) as f:
            check(json.load(f).get("model_type") == name, f"{name}: {label} config model_type")


def main():
    if not os.access(LOOM, os.X_OK):
        sys.exit(f"build loom first ({LOOM} not found)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("gpt2", "llama", "qwen2"):
            model, tokens = check_oracle(name)
            check_loom_written(name, model, tokens, tmp)
    total_failed = failures
    print(f"interop: {'all checks passed' if total_failed == 0 else f'{total_failed} failed'}")
    sys.exit(1 if total_failed else 0)


if __name__ == "__main__":
    main()
