"""The tiny Llama shipped with the package, so the language-model recipes and tests run with no
download and no large model.

`compressor/models/tiny_llama/` holds a Llama-architecture causal LM (2 blocks, hidden 64, 4 query
heads over 2 key/value heads (GQA), SiLU-gated MLP of 192 (three 64-wide groups), tied embeddings, rotary positions), its byte-level
BPE tokenizer (512 tokens, trained here with the `tokenizers` library on the same text, with a
ChatML chat template like SmolLM2's), trained on the first part of the Python documentation
prose shipped in compressor/models/texts/ (the last part is what recipes evaluate on). Recipes name
it `packaged:tiny_llama`.

Reproduce it (deterministic on CPU, about a minute):
    python -m compressor.models.tiny_llama
Its evaluation perplexity is in `tiny_llama/training.json`."""
from __future__ import annotations

import json
from pathlib import Path

from compressor.core.packaged import finish_folder, start_folder

FOLDER = Path(__file__).with_name("tiny_llama")
TEXT = Path(__file__).with_name("texts") / "python_docs_paragraphs.txt"
VOCAB = 512
WINDOW = 128
VAL_TOKENS = 4096
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(TEXT)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make(folder: Path = FOLDER, steps: int = 600, seed: int = 0) -> dict:
    """Write the tokenizer, the trained model and training.json into `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compressor.data.text import TextParams, build_text
    from compressor.measure import lm
    from compressor.models.causal_lm import CausalLM

    start_folder(folder)
    tok = tokenizer(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config._attn_implementation = "eager"
    model = CausalLM(LlamaForCausalLM(config), folder)
    data = build_text(TextParams(path=str(TEXT), tokenizer=str(folder), mode="lm", max_length=WINDOW, stride=WINDOW // 2,
                                 val_tokens=VAL_TOKENS, batch_size=16), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    step = 0
    while step < steps:
        for x, y in data.train:
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
    model.eval()
    stats = lm.accumulate(lambda x: model(x).detach().numpy(), data.val, None)
    model.model.save_pretrained(folder)
    info = {"val_perplexity": round(lm.perplexity(stats), 3), "val_tokens": stats.tokens, "steps": steps,
            "window": WINDOW, "seed": seed, "command": "python -m compressor.models.tiny_llama"}
    (folder / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    info["files"] = finish_folder(folder)
    return info


if __name__ == "__main__":
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    info = make()
    print(f"evaluation perplexity {info['val_perplexity']}; {info['files']}")
