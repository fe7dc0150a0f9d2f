"""Op-level oracle fixtures -> tests/data/oracle/ops.safetensors.

Each op gets random inputs, a random upstream gradient dy, the forward output
and the input gradients from torch autograd, named "<op>.<tensor>".
See tests/oracle/README.md for the list. Run via tests/oracle/generate.py.
"""

import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

LN_EPS = 1e-5
RMS_EPS = 1e-6
ROPE_THETA = 10000.0
OPT_ADAMW = OrderedDict([("lr", 1e-2), ("beta1", 0.9), ("beta2", 0.99), ("eps", 1e-8), ("weight_decay", 0.05)])
OPT_SGD = OrderedDict([("lr", 0.1), ("momentum", 0.9), ("weight_decay", 0.01)])


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def vjp(fn, inputs, dy):
    """y = fn(*inputs); backprop dy; returns (y, [d input])."""
    xs = [leaf(x) for x in inputs]
    y = fn(*xs)
    y.backward(dy)
    return y.detach(), [x.grad.detach().clone() for x in xs]


def add_op(out, op, named_inputs, fn, dy_seed_gen, grad_names):
    """Store inputs, y, dy and gradients of the float inputs listed in grad_names."""
    names = list(named_inputs)
    float_in = [n for n in names if n in grad_names]
    const = {n: named_inputs[n] for n in names if n not in grad_names}

    def f(*xs):
        kw = dict(zip(float_in, xs))
        kw.update(const)
        return fn(**kw)

    with torch.no_grad():
        y0 = f(*[named_inputs[n] for n in float_in])
    dy = C.randn(list(y0.shape), dy_seed_gen)
    y, grads = vjp(f, [named_inputs[n] for n in float_in], dy)
    for n in names:
        out[op + "." + n] = named_inputs[n]
    out[op + ".y"] = y
    out[op + ".dy"] = dy
    for n, g in zip(float_in, grads):
        out[op + "." + grad_names[n]] = g
    return y


def rope_bthd(x, positions, n_head, theta):
    """x: [B, T, H*D] -> rotate-half RoPE per head (HF apply_rotary_pos_emb) -> [B, T, H*D]."""
    q = C.split_heads(x, n_head)
    cos, sin = C.rope_cos_sin(positions.long(), q.shape[-1], theta)
    q, _ = C.apply_rotary_pos_emb(q, None, cos, sin)
    return C.merge_heads(q)


def attention_bthd(q, k, v, hq, hkv):
    """q: [B, T, Hq*D], k, v: [B, T, Hkv*D] -> causal GQA attention [B, T, Hq*D]."""
    qh, kh, vh = C.split_heads(q, hq), C.split_heads(k, hkv), C.split_heads(v, hkv)
    return C.merge_heads(C.causal_attention(qh, kh, vh, 1.0 / math.sqrt(qh.shape[-1])))


def _check_rope(x, positions, n_head, theta, y):
    """Independent check: pair (i, i+D/2) rotated by angle pos * theta^(-2i/D)."""
    b, t, hd = x.shape
    d = hd // n_head
    xr = x.double().view(b, t, n_head, d)
    i = torch.arange(d // 2, dtype=torch.float64)
    ang = positions.double()[:, :, None, None] * theta ** (-2.0 * i / d)
    z = torch.complex(xr[..., : d // 2], xr[..., d // 2:]) * torch.exp(1j * ang)
    ref = torch.cat([z.real, z.imag], -1).reshape(b, t, hd)
    assert torch.allclose(ref, y.double(), atol=1e-5), "rope self-check failed"


def _check_attention(q, k, v, hq, hkv, y):
    """Independent check: explicit per-(batch, head, query) loop in float64."""
    b, t, _ = q.shape
    d = q.shape[-1] // hq
    ref = torch.zeros(b, t, hq * d, dtype=torch.float64)
    for bb in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            qs = q[bb, :, h * d:(h + 1) * d].double()
            ks = k[bb, :, g * d:(g + 1) * d].double()
            vs = v[bb, :, g * d:(g + 1) * d].double()
            for i in range(t):
                s = (ks[: i + 1] @ qs[i]) / math.sqrt(d)
                ref[bb, i, h * d:(h + 1) * d] = torch.softmax(s, 0) @ vs[: i + 1]
    assert torch.allclose(ref, y.double(), atol=1e-5), "attention self-check failed"


def build():
    g = C.gen(4242)
    out = OrderedDict()
    meta = OrderedDict()

    # linear: y = x w^T + b
    add_op(out, "linear", OrderedDict(x=C.randn([5, 7], g), w=C.randn([6, 7], g), b=C.randn([6], g)),
           lambda x, w, b: F.linear(x, w, b), g, {"x": "dx", "w": "dw", "b": "db"})

    # conv1d (GPT-2 Conv1D): y = x w + b, w [in, out]
    add_op(out, "conv1d", OrderedDict(x=C.randn([5, 7], g), w=C.randn([7, 6], g), b=C.randn([6], g)),
           lambda x, w, b: C.conv1d(x, w, b), g, {"x": "dx", "w": "dw", "b": "db"})

    # matmul (batched)
    add_op(out, "matmul", OrderedDict(a=C.randn([3, 4, 5], g), b=C.randn([3, 5, 6], g)),
           lambda a, b: torch.matmul(a, b), g, {"a": "da", "b": "db"})

    # embedding with repeated ids (dw accumulates)
    idx = torch.randint(0, 11, (9,), generator=g, dtype=torch.int64)
    idx[4] = idx[1]
    idx[7] = idx[1]
    idx[8] = idx[2]
    add_op(out, "embedding", OrderedDict(idx=idx.to(torch.int32), w=C.randn([11, 7], g)),
           lambda idx, w: F.embedding(idx.long(), w), g, {"w": "dw"})

    # layernorm
    add_op(out, "layernorm",
           OrderedDict(x=C.randn([6, 10], g, 2.0, 0.5), w=C.randn([10], g, 0.3, 1.0), b=C.randn([10], g, 0.3)),
           lambda x, w, b: F.layer_norm(x, (10,), w, b, LN_EPS), g, {"x": "dx", "w": "dw", "b": "db"})
    meta["layernorm.eps"] = C.fmt(LN_EPS)

    # rmsnorm (HF LlamaRMSNorm)
    add_op(out, "rmsnorm", OrderedDict(x=C.randn([6, 10], g, 2.0, 0.5), w=C.randn([10], g, 0.3, 1.0)),
           lambda x, w: C.rms_norm(x, w, RMS_EPS), g, {"x": "dx", "w": "dw"})
    meta["rmsnorm.eps"] = C.fmt(RMS_EPS)

    # activations on x spanning [-6, 6]
    xs = torch.linspace(-6.0, 6.0, 50)
    y = add_op(out, "gelu", OrderedDict(x=xs.clone()), lambda x: C.gelu_new(x), g, {"x": "dx"})
    assert torch.allclose(y, F.gelu(xs, approximate="tanh"), atol=1e-6)
    add_op(out, "silu", OrderedDict(x=xs.clone()), lambda x: F.silu(x), g, {"x": "dx"})

    # elementwise
    add_op(out, "add", OrderedDict(a=C.randn([13], g), b=C.randn([13], g)),
           lambda a, b: a + b, g, {"a": "da", "b": "db"})
    add_op(out, "mul", OrderedDict(a=C.randn([13], g), b=C.randn([13], g)),
           lambda a, b: a * b, g, {"a": "da", "b": "db"})

    # rope: x [B=2, T=5, H*D = 3*8], positions = arange(5) + 3*b
    positions = (torch.arange(5)[None, :] + 3 * torch.arange(2)[:, None]).to(torch.int32)
    rx = C.randn([2, 5, 24], g)
    y = add_op(out, "rope", OrderedDict(x=rx, positions=positions),
               lambda x, positions: rope_bthd(x, positions, 3, ROPE_THETA), g, {"x": "dx"})
    _check_rope(rx, positions, 3, ROPE_THETA, y)
    meta["rope.theta"] = C.fmt(ROPE_THETA)
    meta["rope.n_head"] = "3"
    meta["rope.head_dim"] = "8"

    # attention (GQA): Hq=4, Hkv=2, D=8, T=7
    for op, b, t, hq, hkv, d in (("attention", 2, 7, 4, 2, 8), ("attention_mha", 2, 9, 3, 3, 4)):
        q, k, v = C.randn([b, t, hq * d], g), C.randn([b, t, hkv * d], g), C.randn([b, t, hkv * d], g)
        y = add_op(out, op, OrderedDict(q=q, k=k, v=v),
                   lambda q, k, v, hq=hq, hkv=hkv: attention_bthd(q, k, v, hq, hkv), g,
                   {"q": "dq", "k": "dk", "v": "dv"})
        _check_attention(q, k, v, hq, hkv, y)
        meta[op + ".n_head"] = str(hq)
        meta[op + ".n_kv_head"] = str(hkv)
        meta[op + ".head_dim"] = str(d)
        meta[op + ".scale"] = C.fmt(1.0 / math.sqrt(d))

    # cross entropy (mean over non-ignored), dloss = 1
    logits = C.randn([6, 10], g, 2.0)
    targets = torch.randint(0, 10, (6,), generator=g, dtype=torch.int64)
    targets[2] = C.IGNORE_INDEX
    lg = leaf(logits)
    loss = C.cross_entropy(lg, targets)
    loss.backward()
    out["cross_entropy.logits"] = logits
    out["cross_entropy.targets"] = targets.to(torch.int32)
    out["cross_entropy.loss"] = loss.detach().reshape(1)
    out["cross_entropy.dlogits"] = lg.grad.detach().clone()
    out["cross_entropy.lse"] = torch.logsumexp(logits, dim=-1)
    meta["cross_entropy.ignore_index"] = str(C.IGNORE_INDEX)

    # optimizers: three steps from p with gradients g1, g2, g3
    p0 = C.randn([20], g)
    grads = [C.randn([20], g) for _ in range(3)]
    for op, make in (
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=OPT_ADAMW["lr"], betas=(OPT_ADAMW["beta1"], OPT_ADAMW["beta2"]),
                                               eps=OPT_ADAMW["eps"], weight_decay=OPT_ADAMW["weight_decay"])),
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=OPT_SGD["lr"], momentum=OPT_SGD["momentum"],
                                           weight_decay=OPT_SGD["weight_decay"])),
    ):
        p = leaf(p0)
        opt = make([p])
        out[op + ".p"] = p0
        for s, gr in enumerate(grads, 1):
            out["%s.g%d" % (op, s)] = gr
            p.grad = gr.clone()
            opt.step()
            out["%s.p%d" % (op, s)] = p.detach().clone()
        hp = OPT_ADAMW if op == "adamw" else OPT_SGD
        for k, v in hp.items():
            meta["%s.%s" % (op, k)] = C.fmt(v)
    _check_optimizers(out)
    return out, meta


def _check_optimizers(out):
    """Independent re-derivation of torch AdamW / SGD (documented in README)."""
    hp = OPT_ADAMW
    p = out["adamw.p"].double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t in range(1, 4):
        gr = out["adamw.g%d" % t].double()
        p = p * (1 - hp["lr"] * hp["weight_decay"])
        m = hp["beta1"] * m + (1 - hp["beta1"]) * gr
        v = hp["beta2"] * v + (1 - hp["beta2"]) * gr * gr
        bc1, bc2 = 1 - hp["beta1"] ** t, 1 - hp["beta2"] ** t
        p = p - (hp["lr"] / bc1) * m / (v.sqrt() / math.sqrt(bc2) + hp["eps"])
        assert torch.allclose(p, out["adamw.p%d" % t].double(), atol=1e-6), "adamw self-check"
    hp = OPT_SGD
    p = out["sgd.p"].double().clone()
    buf = None
    for t in range(1, 4):
        d = out["sgd.g%d" % t].double() + hp["weight_decay"] * p
        buf = d if buf is None else hp["momentum"] * buf + d
        p = p - hp["lr"] * buf
        assert torch.allclose(p, out["sgd.p%d" % t].double(), atol=1e-6), "sgd self-check"


def main(verbose=True):
    C.setup()
    out, meta = build()
    for k, t in out.items():
        assert t.dtype in (torch.float32, torch.int32), k
        if t.dtype == torch.float32:
            assert torch.isfinite(t).all(), k
    path = os.path.join(C.OUT_DIR, "ops.safetensors")
    C.write_safetensors(path, out, meta)
    n = C.check_roundtrip(path, out, meta)
    if verbose:
        print("[ops] %d tensors; cross_entropy.loss = %.6f" % (n, float(out["cross_entropy.loss"])))


if __name__ == "__main__":
    main()
