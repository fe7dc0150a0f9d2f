"""Model-level oracle fixtures: tiny GPT-2, LLaMA (GQA) and Qwen2 (GQA, qkv bias, tied).

For each model writes tests/data/oracle/<model>/{config.json, model.safetensors,
expected.safetensors}. See tests/oracle/README.md for the contents.
Run via tests/oracle/generate.py (or directly with /usr/bin/python3).
"""

import os
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

B, T = 2, 16
IGNORED = [(0, 3), (0, 11), (1, 6)]  # (row, col) of targets set to -100: 2 in row 0, 1 in row 1

# eps 1e-3 (not torch's 1e-8) keeps the 3-step comparison well conditioned: with a tiny eps, an
# element whose gradient is ~0 (GPT-2's key bias is exactly 0 by softmax shift invariance) moves
# by +-lr depending on the sign of fp32 round-off, so no fp32 implementation could match torch to
# 1e-5. AdamW with torch's eps 1e-8 is checked op-level on given gradients (ops.safetensors).
ADAMW = OrderedDict([("lr", 1e-2), ("beta1", 0.9), ("beta2", 0.95), ("eps", 1e-3), ("weight_decay", 0.1)])
SGD = OrderedDict([("sgd_lr", 0.05), ("sgd_momentum", 0.9), ("sgd_weight_decay", 0.01)])
STEPS = 3

MODELS = OrderedDict([
    # name: (config, param-shape fn, forward fn, init seed, batch seed, gpt2-only extras)
    ("gpt2", (C.GPT2_CONFIG, C.gpt2_param_shapes, C.gpt2_forward, 1001, 2001, True)),
    ("llama", (C.LLAMA_CONFIG, C.llama_param_shapes, C.llama_forward, 1002, 2002, False)),
    ("qwen2", (C.QWEN2_CONFIG, C.llama_param_shapes, C.llama_forward, 1003, 2003, False)),
])


def make_batch(seed, vocab):
    g = C.gen(seed)
    tokens = torch.randint(0, vocab, (B, T), generator=g, dtype=torch.int64)
    targets = torch.randint(0, vocab, (B, T), generator=g, dtype=torch.int64)
    for r, c in IGNORED:
        targets[r, c] = C.IGNORE_INDEX
    return tokens.to(torch.int32), targets.to(torch.int32)


def fresh(params):
    return OrderedDict((n, p.detach().clone().requires_grad_(True)) for n, p in params.items())


def total_norm(grads):
    """Same reduction as torch.nn.utils.clip_grad_norm_ (norm_type 2)."""
    return torch.norm(torch.stack([torch.norm(g.detach(), 2.0) for g in grads]), 2.0)


def loss_and_grads(params, fwd, cfg, tokens, targets):
    p = fresh(params)
    logits = fwd(p, cfg, tokens)
    loss = C.cross_entropy(logits, targets)
    loss.backward()
    return logits.detach(), loss.detach(), OrderedDict((n, t.grad.detach().clone()) for n, t in p.items())


def train(params, fwd, cfg, tokens, targets, make_opt, clip=None):
    """STEPS optimizer steps on the same batch; returns (losses, grad_norms, final params)."""
    p = fresh(params)
    plist = list(p.values())
    opt = make_opt(plist)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = C.cross_entropy(fwd(p, cfg, tokens), targets)
        loss.backward()
        if clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(plist, max_norm=clip).detach().clone())
        losses.append(loss.detach().clone())
        opt.step()
    return (torch.stack(losses), torch.stack(norms) if norms else None,
            OrderedDict((n, t.detach().clone()) for n, t in p.items()))


def accumulate(params, fwd, cfg, tokens, targets):
    """Two micro-batches (rows 0 and 1), backward of loss_micro / 2 each."""
    p = fresh(params)
    micro = []
    for r in range(B):
        loss = C.cross_entropy(fwd(p, cfg, tokens[r:r + 1]), targets[r:r + 1])
        (loss / B).backward()
        micro.append(loss.detach())
    return torch.stack(micro).mean().reshape(1), OrderedDict((n, t.grad.detach().clone()) for n, t in p.items())


def self_check(params, fwd, cfg, tokens, logits):
    """Causality: logits of a prefix must not depend on later tokens."""
    with torch.no_grad():
        pre = fwd(params, cfg, tokens[:, : T // 2])
    assert torch.allclose(pre, logits[:, : T // 2], atol=1e-5, rtol=1e-5), "causal mask broken"


def generate_model(name, verbose=True):
    cfg, shapes_fn, fwd, init_seed, batch_seed, extras = MODELS[name]
    cfg = dict(cfg)
    shapes = shapes_fn(cfg)
    params = C.init_params(shapes, init_seed)
    tokens, targets = make_batch(batch_seed, cfg["vocab_size"])
    d = os.path.join(C.OUT_DIR, name)

    # HF model directory
    C.write_json(os.path.join(d, "config.json"), cfg)
    model_tensors = OrderedDict((n, t.detach()) for n, t in params.items())
    C.write_safetensors(os.path.join(d, "model.safetensors"), model_tensors, {"format": "pt"})

    # forward/backward
    logits, loss, grads = loss_and_grads(params, fwd, cfg, tokens, targets)
    self_check(params, fwd, cfg, tokens, logits)
    gnorm0 = float(total_norm(grads.values()))
    clip = float("%.2g" % (0.5 * gnorm0))

    exp = OrderedDict()
    exp["tokens"] = tokens
    exp["targets"] = targets
    exp["logits"] = logits
    exp["loss"] = loss.reshape(1)
    for n, g in grads.items():
        exp["grad." + n] = g

    hp = ADAMW
    a_loss, a_norm, a_params = train(
        params, fwd, cfg, tokens, targets,
        lambda ps: torch.optim.AdamW(ps, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                     eps=hp["eps"], weight_decay=hp["weight_decay"]),
        clip=clip)
    assert torch.equal(a_loss[0], loss), "adamw.loss[0] != loss"
    assert a_norm[0] > clip, "clipping not active at step 1"
    exp["adamw.loss"] = a_loss
    exp["adamw.grad_norm"] = a_norm
    for n, t in a_params.items():
        exp["adamw.param." + n] = t

    meta = OrderedDict((k, C.fmt(v)) for k, v in ADAMW.items())
    meta["clip"] = C.fmt(clip)
    meta["adamw_steps"] = str(STEPS)
    meta["ignore_index"] = str(C.IGNORE_INDEX)
    meta["model_type"] = cfg["model_type"]

    summary = {"loss": float(loss), "grad_norm0": gnorm0, "clip": clip,
               "adamw.loss": a_loss.tolist(), "adamw.grad_norm": a_norm.tolist()}

    if extras:
        s_loss, _, s_params = train(
            params, fwd, cfg, tokens, targets,
            lambda ps: torch.optim.SGD(ps, lr=SGD["sgd_lr"], momentum=SGD["sgd_momentum"],
                                       weight_decay=SGD["sgd_weight_decay"]))
        exp["sgd.loss"] = s_loss
        for n, t in s_params.items():
            exp["sgd.param." + n] = t
        acc_loss, acc_grads = accumulate(params, fwd, cfg, tokens, targets)
        exp["accum.loss"] = acc_loss
        for n, g in acc_grads.items():
            exp["accum.grad." + n] = g
        for k, v in SGD.items():
            meta[k] = C.fmt(v)
        meta["sgd_steps"] = str(STEPS)
        summary["sgd.loss"] = s_loss.tolist()
        summary["accum.loss"] = float(acc_loss)

    for k, t in exp.items():
        if t.dtype == torch.float32:
            assert torch.isfinite(t).all(), k
    path = os.path.join(d, "expected.safetensors")
    C.write_safetensors(path, exp, meta)

    n1 = C.check_roundtrip(os.path.join(d, "model.safetensors"), model_tensors, {"format": "pt"})
    n2 = C.check_roundtrip(path, exp, meta)
    if verbose:
        print("[%s] params=%d (%d tensors), expected tensors=%d" %
              (name, sum(t.numel() for t in params.values()), n1, n2))
        for k, v in summary.items():
            if isinstance(v, list):
                v = "[" + ", ".join("%.6f" % x for x in v) + "]"
            elif isinstance(v, float):
                v = "%.6f" % v
            print("  %-16s %s" % (k, v))
    return summary


def main():
    C.setup()
    for name in MODELS:
        generate_model(name)


if __name__ == "__main__":
    main()
