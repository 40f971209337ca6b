"""Text tasks: character and word corpora (char-rnn, Zaremba et al.) and reversal / copy for
sequence to sequence models.

The corpus is a local UTF-8 file or, by default, the help topics bundled with CPython
(`pydoc_data.topics`), so nothing downloads. A file's size is checked before it is read and its
text decoded strictly. Vocabularies depend on the text alone (the same text, the same ids); the
last `valid_fraction` of the token stream is the validation split.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterator, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from .base import MAX_EVAL_BATCHES, Slot, Task, TaskError, TaskOptions, _bounded, register

MAX_CORPUS_BYTES = 32 << 20  # ids are int64: 256 MiB at most for a char corpus
MAX_VOCAB = 65536
OTHER = "\ufffd"  # char_corpus' vocab_size: the entry of the one id for all characters not kept


def read_corpus(path: Optional[str]) -> str:
    """The text of `path` (bounded, UTF-8), or CPython's bundled help topics when `path` is None."""
    if path is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise TaskError("this Python has no pydoc_data.topics (the default corpus)",
                            hint="give a local UTF-8 text file as the corpus path") from None
        return "\n".join(topics[k] for k in sorted(topics))
    try:
        st = os.stat(path)
    except OSError as e:
        raise TaskError(f"cannot read corpus {path!r}: {e.strerror}") from None
    if not os.path.isfile(path):
        raise TaskError(f"corpus {path!r} is not a regular file")
    if st.st_size > MAX_CORPUS_BYTES:
        raise TaskError(f"corpus {path!r} has {st.st_size:,} bytes (at most {MAX_CORPUS_BYTES:,})")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CORPUS_BYTES + 1)
    except OSError as e:
        raise TaskError(f"cannot read corpus {path!r}: {e.strerror}") from None
    if len(data) > MAX_CORPUS_BYTES:  # grew since stat
        raise TaskError(f"corpus {path!r} has more than {MAX_CORPUS_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"corpus {path!r} is not UTF-8: byte {e.start} is {data[e.start:e.start + 1]!r}") from None


class CharOptions(TaskOptions):
    path: Optional[str] = Field(None, min_length=1, max_length=4096)  # None: pydoc_data.topics
    seq_len: int = Field(50, ge=1, le=4096)  # char-rnn's default seq_length
    valid_fraction: float = Field(0.1, gt=0.0, le=0.5)
    # None: every distinct character. Set: the `vocab_size - 1` most frequent ones and one id for
    # all others (65 fits char_rnn's tiny-shakespeare vocabulary to any corpus).
    vocab_size: Optional[int] = Field(None, ge=2, le=MAX_VOCAB)


class _Corpus(Task):
    """A token stream split into training and validation parts; subclasses `tokenise` the text."""

    unit = "token"

    def __init__(self, options):
        super().__init__(options)
        self.vocab, ids = self.tokenise(read_corpus(options.path))
        cut = len(ids) - int(len(ids) * options.valid_fraction)
        self.train, self.valid = ids[:cut], ids[cut:]
        T = options.seq_len
        self.examples = (len(self.train) - 1) // T  # windows of an epoch: each token a target once
        for split, arr in (("training", self.train), ("validation", self.valid)):
            if len(arr) < T + 1:
                raise TaskError(f"the corpus' {split} split has {len(arr):,} {self.unit}s; seq_len {T} needs "
                                f"at least {T + 1}")

    def tokenise(self, text: str) -> tuple[list[str], np.ndarray]:
        raise NotImplementedError

    def feeds(self):
        return {"ids": Slot("int64", ("N", self.options.seq_len), high=len(self.vocab))}

    def reads(self):
        return {"targets": Slot("int64", ("N", self.options.seq_len), high=len(self.vocab))}

    def _windows(self, arr, starts):
        at = starts[:, None] + np.arange(self.options.seq_len + 1)
        w = arr[at]
        return {"ids": w[:, :-1], "targets": w[:, 1:]}

    def make(self, rng, b):
        starts = rng.integers(0, len(self.train) - self.options.seq_len, size=b)
        return self._windows(self.train, starts)

    def eval_batches(self, batch_size: int, count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The validation split in order, `batch_size` windows a batch (a last short batch dropped);
        `count` caps the batches."""
        _bounded("batch_size", batch_size, 1, 4096)
        T = self.options.seq_len
        windows = (len(self.valid) - 1) // T
        n = max(1, windows // batch_size)
        if count is not None:
            _bounded("count", count, 1, MAX_EVAL_BATCHES)
            n = min(n, count)
        n = min(n, MAX_EVAL_BATCHES)
        per = min(batch_size, windows)
        for i in range(n):
            yield self._windows(self.valid, np.arange(i * per, (i + 1) * per, dtype=np.int64) * T)

    def decode(self, ids) -> str:
        return self.joiner.join(self.vocab[int(i)] for i in ids)


@register("char_corpus")
class CharCorpus(_Corpus):
    """Windows of `seq_len` character ids `ids` and the next characters `targets`; training windows
    start anywhere in the training split, validation windows tile the validation split in order.
    The vocabulary is the sorted set of the corpus' characters; with `vocab_size`, the sorted
    `vocab_size - 1` most frequent (ties by character order), then OTHER, the one id every other
    character reads as."""

    Options = CharOptions
    metric = "bits_per_char"
    metric_doc = "mean cross-entropy of the next character in bits, over the validation windows"
    unit, joiner = "character", ""

    def tokenise(self, text):
        counts = Counter(text)
        if len(counts) > MAX_VOCAB:
            raise TaskError(f"corpus has {len(counts):,} distinct characters (at most {MAX_VOCAB:,})")
        limit = self.options.vocab_size
        if limit is None:
            vocab = sorted(counts)
        else:
            vocab = sorted(sorted(counts, key=lambda ch: (-counts[ch], ch))[:limit - 1]) + [OTHER]
        lookup = {c: i for i, c in enumerate(vocab[:-1] if limit is not None else vocab)}
        other = len(vocab) - 1  # only read when vocab_size is set: every character is kept otherwise
        return vocab, np.fromiter((lookup.get(c, other) for c in text), np.int64, len(text))


class WordOptions(TaskOptions):
    path: Optional[str] = Field(None, min_length=1, max_length=4096)  # None: pydoc_data.topics
    seq_len: int = Field(35, ge=1, le=4096)  # Zaremba et al.'s unrolling
    valid_fraction: float = Field(0.1, gt=0.0, le=0.5)
    vocab_size: int = Field(10000, ge=3, le=MAX_VOCAB)  # Penn Treebank's 10k words


@register("word_corpus")
class WordCorpus(_Corpus):
    """Zaremba et al.'s word-level setup: words split on whitespace, each line ending in `<eos>`;
    the `vocab_size - 2` most frequent words (ties in sorted order) after `<unk>` and `<eos>`, every
    other word read as `<unk>`. Windows as in char_corpus."""

    Options = WordOptions
    metric = "perplexity"
    metric_doc = "exp of the mean cross-entropy of the next word, over the validation windows"
    unit, joiner = "word", " "

    def tokenise(self, text):
        words = [w for line in text.splitlines() for w in (*line.split(), "<eos>")]
        counts: dict[str, int] = {}
        for w in words:
            counts[w] = counts.get(w, 0) + 1
        counts.pop("<unk>", None)
        counts.pop("<eos>", None)
        kept = sorted(counts, key=lambda w: (-counts[w], w))[:self.options.vocab_size - 2]
        vocab = ["<unk>", "<eos>", *kept]
        lookup = {w: i for i, w in enumerate(vocab)}
        return vocab, np.fromiter((lookup.get(w, 0) for w in words), np.int64, len(words))


PAD, BOS, EOS = 0, 1, 2


class Seq2SeqOptions(TaskOptions):
    mode: Literal["reverse", "copy"] = "reverse"
    symbols: int = Field(10, ge=1, le=10000)  # content tokens, ids 3 .. symbols + 2
    min_len: int = Field(1, ge=1, le=512)
    max_len: int = Field(10, ge=1, le=512)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) is larger than max_len ({self.max_len})")
        return self


@register("seq2seq")
class Seq2Seq(Task):
    """Source `src` (ids 3.., padded with 0 to max_len, lengths `src_len`); decoder input `tgt_in`
    (1 = start, then the answer) and target `tgt_out` (the answer, then 2 = end), padded with 0.
    The answer is the source reversed (Sutskever et al.'s sanity check) or copied."""

    Options = Seq2SeqOptions
    metric = "sequence_accuracy"
    metric_doc = "fraction of examples whose whole decoded answer (up to the end token) equals the target"

    def feeds(self):
        o = self.options
        V = o.symbols + 3
        return {"src": Slot("int64", ("N", o.max_len), high=V), "tgt_in": Slot("int64", ("N", o.max_len + 1), high=V)}

    def reads(self):
        o = self.options
        return {"tgt_out": Slot("int64", ("N", o.max_len + 1), high=o.symbols + 3),
                "src_len": Slot("int64", ("N",))}

    def make(self, rng, b):
        o = self.options
        lens = rng.integers(o.min_len, o.max_len + 1, size=b)
        tokens = rng.integers(3, o.symbols + 3, size=(b, o.max_len))
        src = np.where(np.arange(o.max_len) < lens[:, None], tokens, PAD).astype(np.int64)
        tgt_in = np.zeros((b, o.max_len + 1), np.int64)
        tgt_out = np.zeros((b, o.max_len + 1), np.int64)
        tgt_in[:, 0] = BOS
        for i in range(b):
            L = int(lens[i])
            ans = src[i, :L][::-1] if o.mode == "reverse" else src[i, :L]
            tgt_in[i, 1:L + 1] = ans
            tgt_out[i, :L] = ans
            tgt_out[i, L] = EOS
        return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, "src_len": lens.astype(np.int64)}
