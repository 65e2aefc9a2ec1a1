"""What a user of a language model sees: the text it generates and how fast.

- `prompts`: a few fixed prompts, through the tokenizer's chat template where it has one.
- `greedy`: the first tokens a PyTorch model generates greedily (transformers' generate, KV cache).
- `identity`: how much of the uncompressed model's greedy output another model reproduces: the
  mean over prompts of the shared prefix length / the reference's length.
- `torch_speed`: time to first token for a 128-token prompt and decode tokens/s (batch 1, greedy,
  eos ignored), the PyTorch eager figures engines are compared with (engines measure their own:
  compressor/targets/onnx/llm.py)."""
from __future__ import annotations

import time

import torch

PROMPTS = ("The Python language reference describes", "What is a list in Python?",
           "Write one sentence about the sea.")
NEW_TOKENS = 32


def prompts(tokenizer_dir: str | None) -> list[list[int]]:
    if tokenizer_dir is None:
        return []
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if tok.chat_template:
        return [list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]) for p in PROMPTS]
    return [tok(p)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def greedy(model, prompt_ids: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    out = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        y = model.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False)
        out.append(y[0, len(ids):].tolist())
    return out


def identity(reference: list[list[int]], other: list[list[int]]) -> float:
    shares = []
    for a, b in zip(reference, other):
        same = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        shares.append(same / max(len(a), 1))
    return round(sum(shares) / max(len(shares), 1), 4)


@torch.no_grad()
def torch_speed(model, prompt_len: int = 128, new_tokens: int = 128, seed: int = 0) -> dict[str, float]:
    inner = model.model
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, inner.config.vocab_size, (1, prompt_len), generator=g)
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False, eos_token_id=None, pad_token_id=0)
    inner.generate(x, max_new_tokens=2, **kw)  # warm-up
    t = time.perf_counter()
    inner.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    inner.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    total = time.perf_counter() - t
    return {"ttft_ms": round(ttft * 1e3, 2), "decode_tokens_per_s": round((new_tokens - 1) / max(total - ttft, 1e-9), 2),
            "prompt_tokens": prompt_len, "new_tokens": new_tokens}
