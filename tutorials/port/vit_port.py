"""A small NumPy port of ViTForImageClassification, written the way a porter would: its own module names (timm
style), q/k/v fused into one matrix at load time, attention heads kept as (B, H, N, D). It depends on NumPy and
SciPy only (not on refvit): a stand-in for your port in C, JAX, or on an accelerator.

It carries ONE PLANTED BUG for README "Checking your port" (find it with `refvit compare`, not by reading!).

    python tutorials/port/vit_port.py MODEL_DIR REF_TRACE --out port.npz [--dtype float64]

runs the port on the reference trace's own input (`pixel_values`, step 0: same preprocessing on both sides) and
saves every activation under the port's names in an .npz; tutorials/port/names.json maps them to refvit's names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct

import numpy as np

ST_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8"}


def read_safetensors(path: str) -> dict:
    """The safetensors format in 8 lines: u64 header length, JSON header, raw little-endian bytes."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], ST_DTYPES[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def load(model_dir: str, dtype="float32") -> tuple[dict, dict]:
    """(config, weights): the checkpoint's tensors renamed to the port's layout, q/k/v fused per block."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    sd = {k: v.astype(dtype) for k, v in read_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    w = {"patch.w": sd["vit.embeddings.patch_embeddings.projection.weight"],
         "patch.b": sd["vit.embeddings.patch_embeddings.projection.bias"],
         "cls": sd["vit.embeddings.cls_token"], "pos": sd["vit.embeddings.position_embeddings"],
         "norm.w": sd["vit.layernorm.weight"], "norm.b": sd["vit.layernorm.bias"],
         "head.w": sd["classifier.weight"], "head.b": sd["classifier.bias"]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"vit.encoder.layer.{i}."
        a = p + "attention.attention."
        w[f"{i}.qkv.w"] = np.concatenate([sd[a + n + ".weight"] for n in ("query", "key", "value")])  # (3C, C)
        w[f"{i}.qkv.b"] = np.concatenate([sd[a + n + ".bias"] for n in ("query", "key", "value")])
        for mine, theirs in (("proj", "attention.output.dense"), ("fc1", "intermediate.dense"), ("fc2", "output.dense"),
                             ("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            w[f"{i}.{mine}.w"], w[f"{i}.{mine}.b"] = sd[p + theirs + ".weight"], sd[p + theirs + ".bias"]
    return cfg, w


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased variance, as torch
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x):
    # BUG (planted for the README walk-through; see "Checking your port")
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward(cfg: dict, w: dict, pixel_values: np.ndarray, record: dict) -> np.ndarray:
    """Logits (B, labels); every activation goes into `record` under the port's names."""
    B, _, Hpx, Wpx = pixel_values.shape
    P, C, H, eps = cfg["patch_size"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    D = C // H
    # patch embedding: a stride-P convolution = a matrix product over P×P patches
    patches = pixel_values.reshape(B, 3, Hpx // P, P, Wpx // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, 3 * P * P)
    x = patches @ w["patch.w"].reshape(C, -1).T + w["patch.b"]                           # (B, N-1, C)
    x = np.concatenate([np.broadcast_to(w["cls"], (B, 1, C)), x], axis=1) + w["pos"]     # (B, N, C)
    record["patch_embed"] = x
    for i in range(cfg["num_hidden_layers"]):
        h = record[f"blocks.{i}.norm1"] = layer_norm(x, w[f"{i}.norm1.w"], w[f"{i}.norm1.b"], eps)
        qkv = record[f"blocks.{i}.attn.qkv"] = h @ w[f"{i}.qkv.w"].T + w[f"{i}.qkv.b"]  # (B, N, 3C)
        q, k, v = (t.reshape(B, -1, H, D).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))  # (B, H, N, D)
        probs = record[f"blocks.{i}.attn.probs"] = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(D))
        ctx = record[f"blocks.{i}.attn.heads"] = probs @ v                             # (B, H, N, D)
        a = ctx.transpose(0, 2, 1, 3).reshape(B, -1, C) @ w[f"{i}.proj.w"].T + w[f"{i}.proj.b"]
        record[f"blocks.{i}.attn.proj"] = a
        x = x + a
        h = record[f"blocks.{i}.norm2"] = layer_norm(x, w[f"{i}.norm2.w"], w[f"{i}.norm2.b"], eps)
        h = record[f"blocks.{i}.mlp.act"] = gelu(h @ w[f"{i}.fc1.w"].T + w[f"{i}.fc1.b"])
        x = record[f"blocks.{i}"] = x + h @ w[f"{i}.fc2.w"].T + w[f"{i}.fc2.b"]
    x = record["norm"] = layer_norm(x, w["norm.w"], w["norm.b"], eps)
    logits = record["head"] = x[:, 0] @ w["head.w"].T + w["head.b"]
    return logits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("reference", help="a refvit trace: the port runs on its pixel_values")
    ap.add_argument("--out", default="port.npz")
    ap.add_argument("--dtype", default=None, help="default: the reference trace's dtype")
    args = ap.parse_args(argv)
    pixel_values = read_safetensors(args.reference)["pixel_values"]
    dtype = args.dtype or pixel_values.dtype.name
    cfg, w = load(args.model_dir, dtype)
    record = {"pixel_values": pixel_values.astype(dtype)}
    logits = forward(cfg, w, record["pixel_values"], record)
    np.savez(args.out, **record)
    print(f"port: {len(record)} activations -> {args.out}; predicted class {logits.argmax(-1).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
