"""all-MiniLM-L6-v2 in plain torch: the BERT encoder sentence-transformers runs, without transformers.

6 layers, hidden 384, 12 heads, intermediate 1536, GELU (erf), LayerNorm eps 1e-12, absolute positions,
token type 0; then mean pooling over the attention mask and L2 normalisation, as the model's
``modules.json`` (Transformer, Pooling mean, Normalize) says. Weights are read from ``model.safetensors`` by
name (the Hugging Face ``BertModel`` names, with or without the ``bert.``/``0.auto_model.`` prefix).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file (8-byte header length, JSON header, raw little-endian data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(raw[base + start : base + end], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float32, copy=True) if arr.dtype != np.int64 else arr
    return out


def make_minilm(config: dict[str, Any], weights: dict[str, np.ndarray]) -> Any:
    """The encoder as a torch module ``(input_ids, attention_mask) -> [N, hidden]`` unit embeddings."""
    import torch
    from torch import nn

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.attn_out = nn.Linear(hidden, hidden)
            self.attn_norm = nn.LayerNorm(hidden, eps=eps)
            self.intermediate = nn.Linear(hidden, config["intermediate_size"])
            self.output = nn.Linear(config["intermediate_size"], hidden)
            self.out_norm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            n, t, _ = x.shape
            d = hidden // heads

            def split(y: torch.Tensor) -> torch.Tensor:
                return y.view(n, t, heads, d).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, hidden)
            x = self.attn_norm(x + self.attn_out(ctx))
            h = nn.functional.gelu(self.intermediate(x))  # erf GELU, as BERT's "gelu"
            return self.out_norm(x + self.output(h))

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(config["vocab_size"], hidden)
            self.position = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            t = input_ids.shape[1]
            x = self.word(input_ids) + self.position.weight[:t] + self.token_type.weight[0]
            x = self.norm(x)
            mask = attention_mask.to(x.dtype)
            # Hugging Face's extended mask: 0 where attended, the most negative float where padded.
            bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, bias)
            m = mask[:, :, None]
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    model = MiniLM().eval()
    model.load_state_dict(_state_dict(weights, config["num_hidden_layers"]))
    return model


def _state_dict(weights: dict[str, np.ndarray], layers: int) -> dict[str, Any]:
    import torch

    def get(name: str) -> Any:
        for prefix in ("", "bert.", "0.auto_model."):
            if prefix + name in weights:
                return torch.from_numpy(weights[prefix + name])
        raise KeyError(f"{name} not in the checkpoint")

    sd = {
        "word.weight": get("embeddings.word_embeddings.weight"),
        "position.weight": get("embeddings.position_embeddings.weight"),
        "token_type.weight": get("embeddings.token_type_embeddings.weight"),
        "norm.weight": get("embeddings.LayerNorm.weight"),
        "norm.bias": get("embeddings.LayerNorm.bias"),
    }
    names = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense", "output": "output.dense", "out_norm": "output.LayerNorm",
    }
    for i in range(layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                sd[f"layers.{i}.{ours}.{p}"] = get(f"encoder.layer.{i}.{theirs}.{p}")
    return sd
