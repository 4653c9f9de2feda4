"""Words and n-grams, the decontaminate step, and the dedup step's MinHash LSH index."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from ..answers import to_ascii
from ..errors import UserError
from ..io import Tally
from ..progress import bar
from ..records import read_problems
from .rows import Ctx, Row, drop_row

if TYPE_CHECKING:
    import numpy as np


_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[\u3400-\u9fff]|[+\-*/×÷=^%<>]")


def words(text: str) -> list[str]:
    """Lowercase words, numbers, single CJK characters and operator signs (so "12 + 35" differs from "12 - 35")."""
    return _WORD.findall(to_ascii(text).lower())


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    """The n-grams of a word list; a shorter list is its own only n-gram."""
    if len(ws) < n:
        return {tuple(ws)} if ws else set()
    return {tuple(ws[i: i + n]) for i in range(len(ws) - n + 1)}


def decontaminate_rows(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.decontaminate
    if not ctx.eval_paths:
        raise UserError("curate: the decontaminate step needs eval problems: pass --eval-problems FILE "
                        "(or set decontaminate.eval_problems), or remove decontaminate from steps")
    grams: dict[tuple[str, ...], str] = {}
    for path in ctx.eval_paths:
        et = Tally()
        for p in read_problems(path, ctx.cfg.problem_fields, et):
            for g in ngrams(words(p.question), c.ngram):
                grams.setdefault(g, p.id)
        for reason, n in et.counts.items():
            ctx.tally.add(f"decontaminate: eval file {reason}", n=n)
            for ex in et.examples.get(reason, []):
                ctx.tally.add(f"decontaminate: eval file {reason}", ex, n=0)
    hit_by_problem: dict[str, str | None] = {}
    keep = []
    for r in rows:
        pid = r.problem.id
        if pid not in hit_by_problem:
            hit_by_problem[pid] = next((grams[g] for g in ngrams(words(r.problem.question), c.ngram) if g in grams), None)
        hit = hit_by_problem[pid]
        if hit is None and c.check_output:
            hit = next((grams[g] for g in ngrams(words(r.output), c.ngram) if g in grams), None)
        if hit is None:
            keep.append(r)
        else:
            drop_row(ctx, "decontaminate: eval_overlap", r, f"eval problem {hit}")
    ctx.agreement.setdefault("decontaminate", {})["eval_ngrams"] = len(grams)
    return keep


def _dedup_text(r: Row, key: str, keep_think: bool) -> str:
    if key == "question":
        return r.problem.question
    if key == "output":
        return r.text(keep_think)
    return r.problem.question + "\n" + r.text(keep_think)


_SHINGLE_MULT = 1_000_003  # combines a shingle's word hashes: h = h * M + word (mod 2**64)


def shingle_hashes(docs: list[list[str]], k: int) -> list["np.ndarray"]:
    """32-bit hashes of the k-word shingles of each document (a shorter document is one shingle).

    Each distinct word is hashed once (xxh32); shingles are combined for all documents in one numpy pass
    (this is the hot loop of dedup on 100k rows), then cut to 32 bits for MinHash's affine32 scheme,
    which pre-mixes its inputs (datasketch.minhash._fmix), so the combination needs no strength of its own.
    """
    import numpy as np
    import xxhash

    cache: dict[str, int] = {}
    ids = [cache[w] if w in cache else cache.setdefault(w, xxhash.xxh32_intdigest(w.encode()))
           for ws in docs for w in ws]
    flat = np.array(ids, dtype=np.uint64)
    mult, mask = np.uint64(_SHINGLE_MULT), np.uint64(0xFFFFFFFF)
    n = max(len(flat) - k + 1, 0)
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        acc = acc * mult + flat[j: j + n]
    acc &= mask
    out, start = [], 0
    for ws in docs:
        L = len(ws)
        if L >= k:
            out.append(acc[start: start + L - k + 1])
        else:  # shorter than one shingle: the whole document is its shingle
            h = 0
            for x in flat[start: start + L].tolist():
                h = (h * _SHINGLE_MULT + x) & 0xFFFFFFFFFFFFFFFF
            out.append(np.array([h & 0xFFFFFFFF] if L else [], dtype=np.uint64))
        start += L
    return out


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold."""
    from datasketch import MinHashLSH

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:  # a threshold so high that one band would do: LSH only finds candidates, Jaccard decides
        return 2, num_perm // 2
    return lsh.b, lsh.r


def dedup_rows(rows: list[Row], ctx: Ctx) -> list[Row]:
    """Exact duplicates by their normalized words, then near duplicates by MinHash LSH: datasketch's
    MinHash signatures and band parameters; the band index is numpy group ids, because MinHashLSH's
    per-row query + insert (a byteswap per band, twice) was 4 of 8 seconds on 25k rows. A row is dropped
    when a kept row shares a band with it and their estimated Jaccard reaches the threshold (the same
    candidates and estimate as MinHashLSH + MinHash.jaccard; a test checks they agree)."""
    import numpy as np
    from datasketch import MinHash

    c = ctx.cfg.dedup
    exact: dict[str, int] = {}
    todo: list[int] = []
    docs: list[list[str]] = []
    for i, r in enumerate(rows):
        ws = words(_dedup_text(r, c.key, ctx.cfg.keep_think))
        norm = " ".join(ws)
        if norm in exact:
            drop_row(ctx, "dedup: exact_duplicate", r, f"of {rows[exact[norm]].where}")
        else:
            exact[norm] = i
            todo.append(i)
            docs.append(ws)
    if not todo:
        return []
    m = MinHash(num_perm=c.num_perm, seed=c.seed, hashfunc=int)  # inputs are hashes already
    sig = np.empty((len(todo), c.num_perm), dtype=m.hashvalues.dtype)
    with bar("dedup", total=len(todo), unit="row") as b:
        for n, hashes in enumerate(shingle_hashes(docs, c.shingle)):
            m.clear()
            m.update_batch(hashes)
            sig[n] = m.hashvalues
            if n % 1000 == 999:
                b.advance(1000)
        b.advance(len(todo) % 1000)
    n_bands, per_band = lsh_bands(c.threshold, c.num_perm)
    band_ids = []  # per band: a group id per row, equal when the band's values are equal
    for k in range(n_bands):
        band = np.ascontiguousarray(sig[:, k * per_band:(k + 1) * per_band])
        _, inv = np.unique(band.view(np.dtype((np.void, band.dtype.itemsize * per_band))).ravel(), return_inverse=True)
        band_ids.append(inv.ravel().tolist())
    buckets: list[dict[int, list[int]]] = [{} for _ in range(n_bands)]
    need = math.ceil(c.threshold * c.num_perm - 1e-9)  # equal values needed: Jaccard estimate >= threshold
    keep_idx: list[int] = []
    for n, i in enumerate(todo):
        cands = sorted({j for k in range(n_bands) for j in buckets[k].get(band_ids[k][n], ())})
        dup = next((j for j in cands if np.count_nonzero(sig[j] == sig[n]) >= need), None)
        if dup is not None:
            drop_row(ctx, "dedup: near_duplicate", rows[i], f"of {rows[todo[dup]].where}")
            continue
        for k in range(n_bands):
            buckets[k].setdefault(band_ids[k][n], []).append(n)
        keep_idx.append(i)
    return [rows[i] for i in keep_idx]
