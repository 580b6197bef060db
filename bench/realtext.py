"""Offline text and a BERT WordPiece tokenizer for the real-checkpoint section (``bench.realworld``).

Pure logic, no downloads: sentences come from the docstrings of Python's standard library (and ``this``, the Zen
of Python), the tokenizer reads a BERT ``vocab.txt`` (uncased: lower-case, accents stripped, punctuation split,
greedy longest-match WordPiece with ``##`` continuations, as ``BertTokenizer`` does).
"""

from __future__ import annotations

import codecs
import importlib
import inspect
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

#: Standard-library modules whose docstrings give the sentence set: varied topics, stable text.
STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email.message", "enum", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "lzma", "mailbox", "math", "mimetypes", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "poplib",
    "pprint", "profile", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "turtle",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom",
    "zipfile", "zlib",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r"[=(){}\[\]<>_`*#|\\]|>>>|\.\.\.|::|https?:")


def split_sentences(text: str, min_words: int = 5, max_words: int = 30) -> list[str]:
    """Prose sentences of ``text``: paragraphs joined, split after . ! ? before a capital; lines that look like
    code (brackets, ``=``, ``>>>``, underscores, URLs) and sentences outside ``min_words``..``max_words`` left
    out."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.splitlines()]
        if not lines or any(_CODE.search(ln) for ln in lines):
            continue
        joined = " ".join(ln for ln in lines if ln)
        for sent in _SENTENCE_END.split(joined):
            sent = sent.strip()
            words = sent.split()
            if min_words <= len(words) <= max_words and sent[-1:] in ".!?" and sent[:1].isupper():
                out.append(sent)
    return out


def zen_of_python() -> str:
    """The text of ``import this`` without printing it."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the first import prints the poem
        import this
    return codecs.decode(this.s, "rot13")


def docstrings(modules: Iterable[str] = STDLIB_MODULES) -> list[str]:
    """The docstrings of each module and of its public classes and functions, in a fixed order."""
    texts = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001  (a module missing from this Python build is skipped)
            continue
        texts.append(inspect.getdoc(mod) or "")
        for attr in sorted(vars(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                texts.append(inspect.getdoc(obj) or "")
    return texts


def sentence_set(limit: int, seed: int = 0) -> list[str]:
    """Up to ``limit`` distinct prose sentences from the standard library's docstrings and the Zen of Python,
    shuffled with ``seed`` (the same set on every run of the same Python)."""
    seen: dict[str, None] = {}
    for text in [zen_of_python(), *docstrings()]:
        for s in split_sentences(text):
            seen.setdefault(s, None)
    sentences = list(seen)
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [sentences[i] for i in order[:limit]]


# ------------------------------------------------------------------------------------------------ tokenizer


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPiece:
    """BERT's uncased tokenizer over a ``vocab.txt`` (one token a line, the line number is its id)."""

    def __init__(self, vocab: Sequence[str], max_chars: int = 100):
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.max_chars = max_chars
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad, self.unk = self.vocab["[PAD]"], self.vocab["[UNK]"]

    @classmethod
    def from_text(cls, text: str) -> WordPiece:
        lines = [ln.rstrip("\r") for ln in text.split("\n")]
        return cls(lines[:-1] if lines and lines[-1] == "" else lines)

    @staticmethod
    def basic(text: str) -> list[str]:
        """Lower-case, strip accents, drop control characters, split on whitespace and around punctuation."""
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, cur = [], []
        for ch in text:
            if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf"):
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_punctuation(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word; the whole word is [UNK] when a part has no piece."""
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def tokens(self, text: str) -> list[int]:
        return [i for w in self.basic(text) for i in self.wordpiece(w)]

    def encode(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 ``[len(texts), length]``: [CLS] tokens [SEP], truncated
        to ``length`` and padded with [PAD]."""
        ids = np.full((len(texts), length), self.pad, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            toks = [self.cls, *self.tokens(text)[: length - 2], self.sep]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        return ids, mask
