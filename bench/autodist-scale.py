#!/usr/bin/env python3
"""Autodist answers at scale: `loom plan --json` for GPT-2 small to 1T parameters on 1 to 8192
H100s (roofline op times, default memory limit), printed as the Markdown table of BENCHMARKS.md.

    python3 bench/autodist-scale.py [--loom build/loom] [--op-search on|off]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [("GPT-2 small", "gpt2-small", 1024), ("LLaMA-2 7B", "llama-2-7b", 4096),
          ("LLaMA-3 70B", "llama-3-70b", 4096), ("1T", "llama-1t", 4096)]
DEVICES = [1, 8, 64, 1024, 8192]


def plan(loom, config, devices, seq, op_search):
    cmd = [loom, "plan", "--model-config", os.path.join(ROOT, "examples", "configs", config + ".json"),
           "--devices", str(devices), "--device-spec", "h100-80gb-sxm",
           "--global-batch", str(max(devices, 1024)), "--seq", str(seq), "--json",
           "--op-search", op_search]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"
    return json.loads(r.stdout), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loom", default=os.path.join(ROOT, "build", "loom"))
    ap.add_argument("--op-search", default="on")
    a = ap.parse_args()
    print("| model | N | tp | pp | dp | micro-batch x count | schedule | recompute | ZeRO | ops | "
          "step s | MFU | peak GB | plans | search s |")
    print("|" + "---|" * 15)
    for name, config, seq in MODELS:
        for n in DEVICES:
            j, err = plan(a.loom, config, n, seq, a.op_search)
            if j is None:
                if "the smallest needs" in err:  # the smallest memory any plan needs
                    err = "no plan fits: the smallest needs " + err.split("the smallest needs ")[1].split(" (")[0]
                print(f"| {name} | {n} | {err} |" + " |" * 12)
                continue
            ops = "table" if not j["layout"] else j["layout"]
            sched = j["schedule"] if j["pp"] > 1 else "-"
            print(f"| {name} | {n} | {j['tp']} | {j['pp']} | {j['dp']} | "
                  f"{j['micro_batch_size']} x {j['num_micro_batches']} | {sched} | "
                  f"{j['recompute']} | {'on' if j['zero'] else 'off'} | {ops} | "
                  f"{j['step_time_s']:.3g} | {100 * j['mfu']:.1f}% | "
                  f"{j['max_peak_memory_bytes'] / 1e9:.1f} | {j['plans_evaluated']} | "
                  f"{j['search_time_s']:.3f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
