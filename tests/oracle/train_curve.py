#!/usr/bin/env python3
"""Train a GPT-2 directory saved by loom with PyTorch on the same batches loom reads, and print
the loss every 50 steps, to compare a whole training curve with `loom train --log-json`.

    ./build/loom train --model gpt2 --layers 4 --embd 128 --heads 4 --ctx 128 \
        --data examples/data/licenses.txt --steps 0 --save /tmp/init0
    /usr/bin/python3 tests/oracle/train_curve.py /tmp/init0 examples/data/licenses.txt 300
    ./build/loom train --model-dir /tmp/init0 --data examples/data/licenses.txt --steps 300 \
        --batch 8 --seq 128 --lr 3e-3 --log-json

Same AdamW (betas 0.9/0.95, eps 1e-8, no weight decay), lr, clipping (1.0) and batches (step i
reads B*T+1 bytes from i*B*T, wrapping), so the two curves agree to fp32 round-off growth.
"""
import json
import sys

import torch

import common as C


def main():
    model_dir, data_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    B, T, lr = 8, 128, 3e-3
    torch.set_num_threads(2)
    cfg = json.load(open(model_dir + "/config.json"))
    tensors, _ = C.read_safetensors(model_dir + "/model.safetensors")
    p = {k: torch.tensor(v[2], dtype=torch.float32).view(v[1]).requires_grad_(True)
         for k, v in tensors.items()}
    data = torch.tensor(list(open(data_path, "rb").read()), dtype=torch.long)
    opt = torch.optim.AdamW(list(p.values()), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    for step in range(steps):
        idx = (torch.arange(B * T + 1) + step * B * T) % len(data)
        chunk = data[idx]
        x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
        logits = C.gpt2_forward(p, cfg, x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            print(step + 1, round(loss.item(), 6), flush=True)


if __name__ == "__main__":
    main()
