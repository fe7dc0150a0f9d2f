"""Shared code for the loom PyTorch oracle fixtures.

Run the generators with Debian's interpreter (/usr/bin/python3, torch 1.13);
Hugging Face `transformers` and `safetensors` are not needed: this module holds
a small pure-Python safetensors writer/reader and plain-torch re-implementations
of the Hugging Face model math (each function names the HF code it mirrors).

Everything is fp32, single-threaded and seeded, so reruns are byte-identical.
"""

import json
import math
import os
import struct
import sys
from array import array
from collections import OrderedDict

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "tests", "data", "oracle")

IGNORE_INDEX = -100


def setup():
    """Deterministic fp32 CPU torch."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)


def gen(seed):
    """A private, seeded CPU generator (independent of the global RNG)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(shape, g, std=1.0, mean=0.0):
    return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean


def fmt(x):
    """Hyperparameter -> metadata string (shortest exact repr of the float)."""
    return repr(float(x))


# ---------------------------------------------------------------------------
# safetensors (pure Python)
# ---------------------------------------------------------------------------

_DTYPES = {  # torch dtype -> (safetensors dtype, numpy little-endian code, array code)
    torch.float32: ("F32", "<f4", "f"),
    torch.int32: ("I32", "<i4", "i"),
}
_ARRAY_CODE = {v[0]: v[2] for v in _DTYPES.values()}


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} as safetensors.

    Layout: u64 little-endian header length N, N bytes of JSON header (padded
    with spaces to a multiple of 8), then the tensors' raw little-endian data,
    contiguous, in the (sorted-by-name) order of the header.
    """
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict(
            (str(k), str(metadata[k])) for k in sorted(metadata))
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype not in _DTYPES:
            raise TypeError("%s: unsupported dtype %s" % (name, t.dtype))
        st, npcode, _ = _DTYPES[t.dtype]
        raw = t.numpy().astype(npcode).tobytes()
        header[name] = OrderedDict(
            [("dtype", st), ("shape", list(t.shape)), ("data_offsets", [off, off + len(raw)])])
        blobs.append(raw)
        off += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Pure-Python reader (no torch/numpy): returns (tensors, metadata) where
    tensors[name] = (dtype, shape, flat list of Python numbers)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0, "header length not a multiple of 8"
    header = json.loads(data[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    body = data[8 + n:]
    out = {}
    spans = []
    for name, info in header.items():
        b, e = info["data_offsets"]
        code = _ARRAY_CODE[info["dtype"]]
        arr = array(code)
        arr.frombytes(body[b:e])
        if sys.byteorder != "little":
            arr.byteswap()
        numel = 1
        for d in info["shape"]:
            numel *= d
        assert len(arr) == numel and e - b == numel * arr.itemsize, name
        out[name] = (info["dtype"], list(info["shape"]), arr.tolist())
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:  # contiguous, no gaps, no overlap, nothing trailing
        assert b == pos, "gap/overlap in data section"
        pos = e
    assert pos == len(body), "trailing bytes after tensor data"
    return out, metadata


def check_roundtrip(path, tensors, metadata=None):
    """Reload with the pure-Python reader and compare bit-exactly."""
    got, meta = read_safetensors(path)
    assert set(got) == set(tensors), (path, set(got) ^ set(tensors))
    for name, t in tensors.items():
        dt, shape, vals = got[name]
        assert dt == _DTYPES[t.dtype][0], name
        assert shape == list(t.shape), name
        ref = t.detach().contiguous().reshape(-1).tolist()
        assert vals == ref, "value mismatch in %s:%s" % (path, name)
    want_meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    assert meta == want_meta, (path, meta, want_meta)
    return len(got)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------
# Elementwise / layer math, each mirroring a Hugging Face module
# ---------------------------------------------------------------------------

def gelu_new(x):
    """transformers.activations.NewGELUActivation (GPT-2 "gelu_new")."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def conv1d(x, w, b):
    """transformers.pytorch_utils.Conv1D: y = x @ w + b with w stored [in, out]."""
    size_out = x.size()[:-1] + (w.size(-1),)
    y = torch.addmm(b, x.reshape(-1, x.size(-1)), w)
    return y.view(size_out)


def rms_norm(x, w, eps):
    """transformers...modeling_llama.LlamaRMSNorm.forward (also Qwen2RMSNorm)."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return w * h.to(input_dtype)


def rotate_half(x):
    """modeling_llama.rotate_half: cat(-x2, x1) over the two halves of the last dim."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(position_ids, head_dim, theta):
    """modeling_llama.LlamaRotaryEmbedding (rope_type "default", attention_scaling 1).

    position_ids: int [B, T] -> cos, sin [B, T, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq_expanded = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].float()
    freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """modeling_llama.apply_rotary_pos_emb; q, k: [B, H, T, D]."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin) if q is not None else None
    k_embed = (k * cos) + (rotate_half(k) * sin) if k is not None else None
    return q_embed, k_embed


def repeat_kv(x, n_rep):
    """modeling_llama.repeat_kv: [B, Hkv, T, D] -> [B, Hkv*n_rep, T, D];
    query head h reads kv head h // n_rep."""
    b, hkv, t, d = x.shape
    if n_rep == 1:
        return x
    x = x[:, :, None, :, :].expand(b, hkv, n_rep, t, d)
    return x.reshape(b, hkv * n_rep, t, d)


def causal_attention(q, k, v, scale):
    """modeling_llama.eager_attention_forward (== GPT2 eager attention) with a
    causal mask, no dropout. q: [B, Hq, T, D]; k, v: [B, Hkv, T, D]."""
    n_rep = q.shape[1] // k.shape[1]
    k = repeat_kv(k, n_rep)
    v = repeat_kv(v, n_rep)
    t = q.shape[2]
    w = torch.matmul(q, k.transpose(2, 3)) * scale
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    w = torch.where(mask, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(w, v)  # [B, Hq, T, D]


def split_heads(x, n_head):
    """[B, T, H*D] -> [B, H, T, D]."""
    b, t, c = x.shape
    return x.view(b, t, n_head, c // n_head).transpose(1, 2)


def merge_heads(x):
    """[B, H, T, D] -> [B, T, H*D]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).contiguous().view(b, t, h * d)


def cross_entropy(logits, targets):
    """Mean token cross entropy over non-ignored targets (ignore_index -100).
    Targets are already the next-token ids: no shift is applied (unlike the
    label shift inside HF *ForCausalLM)."""
    v = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, v).float(), targets.reshape(-1).long(),
                           ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------
# Tiny GPT-2 (transformers/models/gpt2/modeling_gpt2.py, GPT2LMHeadModel)
# ---------------------------------------------------------------------------

GPT2_CONFIG = OrderedDict([
    ("architectures", ["GPT2LMHeadModel"]),
    ("model_type", "gpt2"),
    ("vocab_size", 96),
    ("n_positions", 32),
    ("n_ctx", 32),
    ("n_embd", 32),
    ("n_layer", 2),
    ("n_head", 4),
    ("n_inner", None),
    ("activation_function", "gelu_new"),
    ("resid_pdrop", 0.0),
    ("embd_pdrop", 0.0),
    ("attn_pdrop", 0.0),
    ("layer_norm_epsilon", 1e-05),
    ("initializer_range", 0.02),
    ("scale_attn_weights", True),
    ("scale_attn_by_inverse_layer_idx", False),
    ("reorder_and_upcast_attn", False),
    ("tie_word_embeddings", True),
    ("bos_token_id", 0),
    ("eos_token_id", 0),
    ("use_cache", True),
    ("torch_dtype", "float32"),
])


def gpt2_param_shapes(cfg):
    """HF parameter names/shapes in GPT2LMHeadModel.parameters() order
    (lm_head.weight is tied to transformer.wte.weight and not listed)."""
    c, v = cfg["n_embd"], cfg["vocab_size"]
    inner = cfg["n_inner"] or 4 * c
    s = OrderedDict()
    s["transformer.wte.weight"] = [v, c]
    s["transformer.wpe.weight"] = [cfg["n_positions"], c]
    for i in range(cfg["n_layer"]):
        p = "transformer.h.%d." % i
        s[p + "ln_1.weight"] = [c]
        s[p + "ln_1.bias"] = [c]
        s[p + "attn.c_attn.weight"] = [c, 3 * c]
        s[p + "attn.c_attn.bias"] = [3 * c]
        s[p + "attn.c_proj.weight"] = [c, c]
        s[p + "attn.c_proj.bias"] = [c]
        s[p + "ln_2.weight"] = [c]
        s[p + "ln_2.bias"] = [c]
        s[p + "mlp.c_fc.weight"] = [c, inner]
        s[p + "mlp.c_fc.bias"] = [inner]
        s[p + "mlp.c_proj.weight"] = [inner, c]
        s[p + "mlp.c_proj.bias"] = [c]
    s["transformer.ln_f.weight"] = [c]
    s["transformer.ln_f.bias"] = [c]
    return s


def init_params(shapes, seed, mat_std=0.1, bias_std=0.02, norm_std=0.1):
    """Non-trivial random init: matrices N(0, mat_std); biases (incl. LayerNorm
    biases) N(0, bias_std); norm weights 1 + N(0, norm_std). Drawn in
    parameter order from one seeded generator."""
    g = gen(seed)
    params = OrderedDict()
    for name, shape in shapes.items():
        is_norm = ("ln_" in name or "layernorm" in name or name.endswith("norm.weight"))
        if name.endswith(".bias"):
            t = randn(shape, g, bias_std)
        elif is_norm:
            t = randn(shape, g, norm_std, 1.0)
        else:
            t = randn(shape, g, mat_std)
        params[name] = t.requires_grad_(True)
    return params


def gpt2_forward(p, cfg, tokens):
    """GPT2LMHeadModel.forward (eval, no dropout, no cache) -> logits [B, T, V].
    tokens: int [B, T]; positions are 0..T-1."""
    c, nh, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    tokens = tokens.long()
    t = tokens.shape[1]
    pos = torch.arange(t, dtype=torch.long)
    x = F.embedding(tokens, p["transformer.wte.weight"]) + F.embedding(pos, p["transformer.wpe.weight"])[None]
    for i in range(cfg["n_layer"]):
        pre = "transformer.h.%d." % i
        # GPT2Block: attention sub-block (GPT2Attention)
        h = F.layer_norm(x, (c,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], eps)
        qkv = conv1d(h, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"])
        q, k, v = qkv.split(c, dim=2)
        q, k, v = split_heads(q, nh), split_heads(k, nh), split_heads(v, nh)
        a = causal_attention(q, k, v, 1.0 / math.sqrt(c // nh))
        a = conv1d(merge_heads(a), p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        x = x + a
        # GPT2MLP
        h = F.layer_norm(x, (c,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], eps)
        h = gelu_new(conv1d(h, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]))
        h = conv1d(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
        x = x + h
    x = F.layer_norm(x, (c,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return F.linear(x, p["transformer.wte.weight"])  # tied lm_head


# ---------------------------------------------------------------------------
# Tiny LLaMA / Qwen2 (transformers/models/llama/modeling_llama.py,
# transformers/models/qwen2/modeling_qwen2.py: *ForCausalLM)
# ---------------------------------------------------------------------------

LLAMA_CONFIG = OrderedDict([
    ("architectures", ["LlamaForCausalLM"]),
    ("model_type", "llama"),
    ("vocab_size", 96),
    ("hidden_size", 32),
    ("intermediate_size", 64),
    ("num_hidden_layers", 2),
    ("num_attention_heads", 4),
    ("num_key_value_heads", 2),
    ("head_dim", 8),
    ("hidden_act", "silu"),
    ("max_position_embeddings", 64),
    ("rms_norm_eps", 1e-06),
    ("rope_theta", 10000.0),
    ("rope_scaling", None),
    ("attention_bias", False),
    ("attention_dropout", 0.0),
    ("mlp_bias", False),
    ("pretraining_tp", 1),
    ("initializer_range", 0.02),
    ("tie_word_embeddings", False),
    ("bos_token_id", 1),
    ("eos_token_id", 2),
    ("use_cache", True),
    ("torch_dtype", "float32"),
])

QWEN2_CONFIG = OrderedDict([
    ("architectures", ["Qwen2ForCausalLM"]),
    ("model_type", "qwen2"),
    ("vocab_size", 96),
    ("hidden_size", 32),
    ("intermediate_size", 64),
    ("num_hidden_layers", 2),
    ("num_attention_heads", 4),
    ("num_key_value_heads", 1),
    ("hidden_act", "silu"),
    ("max_position_embeddings", 64),
    ("rms_norm_eps", 1e-06),
    ("rope_theta", 1000000.0),
    ("rope_scaling", None),
    ("attention_dropout", 0.0),
    ("use_sliding_window", False),
    ("sliding_window", None),
    ("max_window_layers", 2),
    ("initializer_range", 0.02),
    ("tie_word_embeddings", True),
    ("bos_token_id", 1),
    ("eos_token_id", 2),
    ("use_cache", True),
    ("torch_dtype", "float32"),
])


def _qkv_bias(cfg):
    # Qwen2 always has q/k/v biases (no config field); LLaMA follows attention_bias.
    return cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False))


def _head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def llama_param_shapes(cfg):
    """HF parameter names/shapes in *ForCausalLM.parameters() order
    (nn.Linear weights are [out, in]); lm_head.weight only if untied."""
    c, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    d = _head_dim(cfg)
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    bias = _qkv_bias(cfg)
    s = OrderedDict()
    s["model.embed_tokens.weight"] = [v, c]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        for proj, out in (("q_proj", hq * d), ("k_proj", hkv * d), ("v_proj", hkv * d)):
            s[p + "self_attn.%s.weight" % proj] = [out, c]
            if bias:
                s[p + "self_attn.%s.bias" % proj] = [out]
        s[p + "self_attn.o_proj.weight"] = [c, hq * d]
        s[p + "mlp.gate_proj.weight"] = [f, c]
        s[p + "mlp.up_proj.weight"] = [f, c]
        s[p + "mlp.down_proj.weight"] = [c, f]
        s[p + "input_layernorm.weight"] = [c]
        s[p + "post_attention_layernorm.weight"] = [c]
    s["model.norm.weight"] = [c]
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = [v, c]
    return s


def llama_forward(p, cfg, tokens):
    """LlamaForCausalLM / Qwen2ForCausalLM forward (no cache, no dropout) ->
    logits [B, T, V]. tokens: int [B, T]; position_ids are 0..T-1 per row."""
    eps = cfg["rms_norm_eps"]
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = _head_dim(cfg)
    tokens = tokens.long()
    b, t = tokens.shape
    position_ids = torch.arange(t, dtype=torch.long)[None].expand(b, t)
    cos, sin = rope_cos_sin(position_ids, d, cfg["rope_theta"])
    x = F.embedding(tokens, p["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        pre = "model.layers.%d." % i
        # LlamaDecoderLayer: attention sub-block (LlamaAttention / Qwen2Attention)
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = F.linear(h, p[pre + "self_attn.q_proj.weight"], p.get(pre + "self_attn.q_proj.bias"))
        k = F.linear(h, p[pre + "self_attn.k_proj.weight"], p.get(pre + "self_attn.k_proj.bias"))
        v = F.linear(h, p[pre + "self_attn.v_proj.weight"], p.get(pre + "self_attn.v_proj.bias"))
        q, k, v = split_heads(q, hq), split_heads(k, hkv), split_heads(v, hkv)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        a = causal_attention(q, k, v, d ** -0.5)
        x = x + F.linear(merge_heads(a), p[pre + "self_attn.o_proj.weight"])
        # LlamaMLP: down(act(gate(x)) * up(x))
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        h = F.silu(F.linear(h, p[pre + "mlp.gate_proj.weight"])) * F.linear(h, p[pre + "mlp.up_proj.weight"])
        x = x + F.linear(h, p[pre + "mlp.down_proj.weight"])
    x = rms_norm(x, p["model.norm.weight"], eps)
    lm_head = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
    return F.linear(x, lm_head)
