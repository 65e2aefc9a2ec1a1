"""Real English text shipped with the package, made from the Python documentation that comes
with every Python interpreter (`pydoc_data.topics`, the language reference's topics as plain
text; Python Software Foundation License), so text recipes and benchmarks run with no download.

Writes, under compressor/models/texts/:
- `python_docs.txt`: one sentence per line (the `text` data source's format): sentences of
  40-300 characters that start with an upper-case letter, end with . ! or ?, and hold none of
  the characters ``* ` > | = ( ) { } [ ]`` (code, markup, tables), in document order (topics
  sorted by name), each kept once.
- `python_docs_paragraphs.txt`: one paragraph of prose per line (paragraphs of at least 200
  characters that start with an upper-case letter, end with a full stop and hold no interpreter
  prompt), for language-model text (perplexity).

Reproduce (deterministic for a given Python version; the shipped files came from 3.11.7):
    python -m compressor.data.make_sentences
"""
from __future__ import annotations

import platform
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "models" / "texts"
CODE_CHARS = set("*`>|=(){}[]")
SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<!etc\.)(?<=[.!?])\s+(?=[A-Z\"'])")  # not after e.g. i.e. etc.


def paragraphs() -> list[str]:
    """Paragraphs of every topic (headings left out), whitespace collapsed, topics in name order."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = block.split("\n")
            if not lines[0].strip():
                continue
            if len(lines) > 1 and set(lines[1].strip()) <= set("*=-") and lines[1].strip():
                continue  # a heading underlined with *** or ===
            out.append(re.sub(r"\s+", " ", " ".join(lines)).strip())
    return out


def sentences(paras: list[str]) -> list[str]:
    seen, out = set(), []
    for para in paras:
        for s in SENTENCE_END.split(para):
            s = s.strip()
            if 40 <= len(s) <= 300 and s[0].isupper() and s[-1] in ".!?" and not CODE_CHARS & set(s) \
                    and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def prose(paras: list[str]) -> list[str]:
    seen, out = set(), []
    for p in paras:
        if len(p) >= 200 and p[0].isupper() and p.endswith(".") and ">>>" not in p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def main(out: Path = OUT) -> None:
    paras = paragraphs()
    out.mkdir(parents=True, exist_ok=True)
    sents, prose_paras = sentences(paras), prose(paras)
    (out / "python_docs.txt").write_text("\n".join(sents) + "\n", encoding="utf-8")
    (out / "python_docs_paragraphs.txt").write_text("\n".join(prose_paras) + "\n", encoding="utf-8")
    print(f"{len(sents)} sentences, {len(prose_paras)} paragraphs from the Python {platform.python_version()} "
          f"documentation -> {out}")


if __name__ == "__main__":
    main()
