"""The fixtures' tokenizer: a tiny byte-level BPE trained on a fixed corpus.

It is built like SmolLM2's (individual digits, then the GPT-2 byte-level
regex; llama.cpp calls that pre-tokenizer `smollm`), with ChatML special
tokens at ids 0-2, so the same code paths run as on the real model, and with
few enough merges that multi-byte characters (é, 日) get split across tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# SmolLM2-Instruct's template (ChatML with a default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The sequence every fixture's expected logits are computed on.
PROMPT = (
    "<|im_start|>user\nHéllo 日本! What is 12+7?<|im_end|>\n"
    "<|im_start|>assistant\nThe answer is 19.<|im_end|>"
)

HF_TOKEN_TEXTS = [
    "Hello world",
    "1234567890",
    "3.14159 and 42,000",
    "héllo wörld",
    "naïve café über straße",
    "日本語のテキスト",
    "emoji: 🙂🚀 done",
    "a   b\t\tc\n\n\nd",
    "   leading and trailing   ",
    "def f(x):\n    return x * 2  # double\n",
    "it's they're we've I'm you'll he'd",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more<|im_start|>",
    "",
]

_CORPUS_PARTS = [
    "The quick brown fox jumps over the lazy dog. ",
    "Hello world! Hello there, how are you today? I am fine, thank you. ",
    "The capital of France is Paris. The capital of Japan is Tokyo. ",
    "What is the answer? The answer is 42. What is 12+7? It is 19. ",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 42,000 1234567890. ",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n",
    'fn main() {\n    let x = vec![1, 2, 3];\n    println!("{:?}", x);\n}\n',
    "It's a small model. They're tiny. We've tested it. I'm sure you'll like it; he'd agree. ",
    "Café, naïve, résumé, über, Straße, déjà vu, crème brûlée, héllo wörld. ",
    "日本語のテキストです。東京は日本の首都です。こんにちは世界。",
    "Привет, мир! Ελληνικά γράμματα. 中文文本。 한국어 텍스트. ",
    "Emoji: 🙂 🚀 ❤️ 👍 — dashes – and “quotes” and ‘single’ ones… ",
    "Tabs\tand\tspaces   and\n\nnewlines\n\n\n   indented lines\n",
    "user\nassistant\nsystem\nYou are a helpful AI assistant. ",
    "Machines on a desk run language models together, sharing layers and heads. ",
]


def corpus() -> list[str]:
    """A few KB of varied text; repetition makes common words merge."""
    lines = []
    for rep in range(6):
        for i, part in enumerate(_CORPUS_PARTS):
            if (i + rep) % 3 != 0 or rep == 0:
                lines.append(part)
    return lines


def train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise SystemExit(f"tokenizer trained to {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise SystemExit(f"special token {s} got id {tok.token_to_id(s)}, wanted {i}")
    return tok


def write_tokenizer_files(dirpath: Path, tok) -> None:
    tok.save(str(dirpath / "tokenizer.json"))
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 2048,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<|endoftext|>",
    }
    (dirpath / "tokenizer_config.json").write_text(
        json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
