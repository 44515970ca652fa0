"""The data set: a page mix written to a file, deterministic given its seed.

``zero`` pages, ``same`` pages (one random 8-byte value repeated), ``text`` pages (4 KiB cut
from real files on this machine: documentation, licences, Python sources, binaries; never
synthetic) and ``random`` pages.  Page kinds, the cut positions and the random bytes all
come from one seed; the corpus is read in sorted path order, so the same seed on the same
machine gives the same file (its SHA-256 is in the report).
"""

import dataclasses
import hashlib
import os
import re

import numpy as np

from uzram.core.constants import PAGE_SIZE
from uzram.core.errors import ConfigError
from .common import BenchError, listdir, walk_sorted


KINDS = ("zero", "same", "text", "random")
DEFAULT_MIX = {"zero": 25, "same": 10, "text": 45, "random": 20}


def parse_mix(text):
    """``zero=25,same=10,text=45,random=20`` -> {kind: fraction} summing to 1.

    Kinds left out get 0.  Raises ConfigError naming the bad part."""
    shares = dict.fromkeys(KINDS, 0.0)
    seen = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip().lower()
        if not sep:
            raise ConfigError(f"--mix: {part!r} is not KIND=SHARE (kinds: {', '.join(KINDS)})")
        if kind not in shares:
            raise ConfigError(f"--mix: unknown page kind {kind!r} (kinds: {', '.join(KINDS)})")
        if kind in seen:
            raise ConfigError(f"--mix: {kind} given more than once")
        seen.add(kind)
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"--mix: {kind}={value!r} is not a number") from None
        if not (share >= 0 and share != float("inf")):
            raise ConfigError(f"--mix: {kind}={value} must be a number >= 0")
        shares[kind] = share
    total = sum(shares.values())
    if total <= 0:
        raise ConfigError("--mix: the shares add up to 0")
    return {k: v / total for k, v in shares.items()}


def format_mix(mix):
    return ",".join(f"{k}={round(mix[k] * 100, 2):g}" for k in KINDS)


def _is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def corpus_sources():
    """(group, share, [roots], accept) for the compressible pages: real files on this machine."""
    pythons = sorted(d for d in (os.path.join("/usr/lib", n) for n in listdir("/usr/lib"))
                     if re.fullmatch(r"python3(\.\d+)?", os.path.basename(d)) and os.path.isdir(d))
    no_archives = lambda p: not p.endswith((".gz", ".xz", ".bz2", ".zst", ".zip", ".png", ".jpg", ".svg"))  # noqa: E731
    return (
        ("docs", 0.25, ["/usr/share/doc"], no_archives),
        ("licenses", 0.05, ["/usr/share/common-licenses"], no_archives),
        ("python", 0.35, pythons, lambda p: p.endswith(".py")),
        ("binaries", 0.35, ["/usr/bin"], _is_elf),
    )


def build_corpus(limit):
    """Up to ``limit`` bytes of real files, each group filling its share, concatenated.

    Returns (bytes, {group: {"files": n, "bytes": n}}).  BenchError if nothing is readable."""
    parts, summary = [], {}
    for group, share, roots, accept in corpus_sources():
        quota = int(limit * share)
        got, files = 0, 0
        for root in roots:
            for path in walk_sorted(root, accept):
                if got >= quota:
                    break
                try:
                    with open(path, "rb") as f:
                        data = f.read(quota - got)
                except OSError:
                    continue
                parts.append(data)
                got += len(data)
                files += 1
        summary[group] = {"files": files, "bytes": got, "roots": roots}
    corpus = b"".join(parts)
    if len(corpus) < PAGE_SIZE:
        raise BenchError("no readable files for compressible pages (looked in /usr/share/doc, "
                         "/usr/share/common-licenses, /usr/lib/python3*, /usr/bin)")
    return corpus, summary


@dataclasses.dataclass(frozen=True)
class Dataset:
    path: str
    size: int
    seed: int
    mix: dict
    pages: dict
    """Pages of each kind actually drawn."""
    sha256: str
    corpus_bytes: int
    corpus: dict

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("path")
        d["mix"] = format_mix(self.mix)
        return d


def make_dataset(path, size, mix, seed, corpus_limit=32 << 20, chunk_pages=4096):
    """Write the page mix to ``path``: ``size`` bytes (whole pages), deterministic given ``seed``."""
    if size < PAGE_SIZE or size % PAGE_SIZE:
        raise ConfigError(f"--size: {size} must be a positive multiple of {PAGE_SIZE}")
    npages = size // PAGE_SIZE
    rng = np.random.default_rng(seed)
    probs = np.array([mix[k] for k in KINDS], dtype=np.float64)
    kinds = rng.choice(len(KINDS), size=npages, p=probs / probs.sum()).astype(np.uint8)
    corpus, corpus_summary = (b"", {})
    if mix["text"] > 0:
        corpus, corpus_summary = build_corpus(min(corpus_limit, max(size, 1 << 20)))
    cpages = np.frombuffer(corpus[:len(corpus) // PAGE_SIZE * PAGE_SIZE], dtype=np.uint8).reshape(-1, PAGE_SIZE) \
        if corpus else None
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for first in range(0, npages, chunk_pages):
            k = kinds[first:first + chunk_pages]
            buf = np.zeros((len(k), PAGE_SIZE), dtype=np.uint8)
            same = np.flatnonzero(k == 1)
            if same.size:
                words = rng.integers(1, 1 << 64, size=same.size, dtype=np.uint64)
                buf.view(np.uint64)[same] = words[:, None]
            text = np.flatnonzero(k == 2)
            if text.size:
                buf[text] = cpages[rng.integers(0, len(cpages), size=text.size)]
            rand = np.flatnonzero(k == 3)
            if rand.size:
                buf[rand] = rng.integers(0, 256, size=(rand.size, PAGE_SIZE), dtype=np.uint8)
            data = buf.tobytes()
            h.update(data)
            f.write(data)
    counts = {name: int(np.count_nonzero(kinds == i)) for i, name in enumerate(KINDS)}
    return Dataset(path=path, size=size, seed=seed, mix=mix, pages=counts, sha256=h.hexdigest(),
                   corpus_bytes=len(corpus), corpus=corpus_summary)


def files_equal(a, b, chunk=8 << 20):
    """Byte-for-byte comparison; a shorter file is padded with zeros (sparse outputs)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if not x and not y:
                return True
            if len(x) != len(y):
                n = max(len(x), len(y))
                x, y = x.ljust(n, b"\0"), y.ljust(n, b"\0")
            if x != y:
                return False
