"""Make a tiny Llama with random weights that a real vLLM serves: no download, about 3 MB, about 11 s.

    <engine venv>/bin/python infra/engines/tiny_model.py [DIR]   default: ~/.cache/autotune/models/tiny-llama

Runs inside the engine's virtualenv (transformers and tokenizers come with vLLM), not autotune's.
Idempotent: a directory whose stamp matches this recipe is kept. Deterministic: the tokenizer is
trained on a corpus made here from a fixed seed, and the weights come from a fixed seed.

The weights are random: the model emits EOS at random, so a benchmark sends `ignore_eos: true`. Its
speed says nothing about a real model's, on a GPU or not; it exists so that everything around the
engine (launch, flags, health, streaming, metrics, failures, teardown) is the real vLLM's.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

RECIPE = "tiny-llama-v1 hidden128 layers2 heads4 vocab4096 ctx2048 seed0"
VOCAB = 4096
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (  # the benchmark client's prompt words, and more English, so that a word is about one token
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact be have do say get make go know take see come think look "
    "want give use find tell ask seem feel try leave call good new first last long great little own other old "
    "right big high different small large next early young important few public bad same able the of and to "
    "in is that it for on with as was at by from this an are or not but which they you he she we all can "
    "there their more will one would about if what when so up out into only some could them other than then "
    "now its also after over two these may any most such through where much before between under never each"
).split()


def corpus(seed: int = 0, lines: int = 20_000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 30))]
        words[0] = f"r{rng.getrandbits(24):x}" if rng.random() < 0.2 else words[0]
        out.append(" ".join(words) + rng.choice([".", ",", "?", "!", ""]) + " " + str(rng.randint(0, 9999)))
    return out


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=2048, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True, torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # whole or nothing: a half-written model is never used
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        fast.save_pretrained(staging)
        (staging / "AUTOTUNE_RECIPE").write_text(RECIPE + "\n")
        (staging / "README.md").write_text("A tiny Llama with RANDOM weights, made by autotune's infra/engines/tiny_model.py for testing a real vLLM on CPU.\n")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        staging.rename(out)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache" / "autotune" / "models" / "tiny-llama").expanduser().absolute()
    stamp = out / "AUTOTUNE_RECIPE"
    if stamp.exists() and stamp.read_text().strip() == RECIPE:
        print(f"tiny-model: already made in {out}", file=sys.stderr)
        print(out)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    build(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"tiny-model: made {out} in {time.monotonic() - t0:.1f}s ({size / 1e6:.1f} MB; random weights)", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
