"""Calculator-aware decoding: when the text ends with ``<arithmetic expression> =``, the exact value is forced.

Two pieces, shared by the eval backend (:func:`mathdistill.backends.generate_batched`) and ``serve``:

- :func:`result_for` (text level): the result to write after a trailing ``=`` (or ``= ``), computed exactly
  with :mod:`mathdistill.arith`'s parser (Fractions, never ``eval``) and formatted in the chain's own style:
  an integer when whole; otherwise the operands' decimal places (money keeps two), or a fraction when the
  chain writes fractions; thousands separators, ``$`` and percentages as the operands have them. Dates,
  ratios, phone numbers, variables, a lone number, division by zero and results above 30 digits give None.
- :class:`Calculator` (token level): per sequence, a cheap test on the last two token ids (does the text end
  with ``=``?) decides whether to decode a short tail; when :func:`result_for` answers, the result's token
  ids (tokenized in context, checked to round-trip) are forced one per step by masking the logits, and the
  step after the last one forbids tokens that would extend the number (a digit, or ``.``/``,`` + digit).
"""

from __future__ import annotations

import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence

from .arith import _NUM, MAX_DIGITS, MAX_EXPR_CHARS, ArithError, evaluate, normalize

TAIL_TOKENS = 24  # tokens decoded per check: an expression line fits; bounded work per step
MAX_DECIMALS = 6  # a terminating result is written exactly up to this many places, else rounded

_TAIL = re.compile(r"[\d\s.,+\-−–*/×÷·()%^$]*$")
_OPS_AT_END = "+-−–*/×÷·^"  # a dropped piece ending in one of these: the expression goes on to the left
_NOT_ARITH = [
    re.compile(r"\d+\s?-\s?\d+\s?-\s?\d+|\d+/\d+/\d+"),  # dates 2024-05-01, 05/01/2024, phone 555-123-4567
    re.compile(r"(?<![\d.,])\d{3}-\d{4}(?!\d)"),  # phone 555-1234
    re.compile(r"(?<![\d.,])0\d"),  # a leading zero: "05" is a date or a code, not a number
]
_FRACTION = re.compile(r"(?<![\d.,])\d+/\d+(?![\d.,])")


def _places(num: str) -> int:
    return len(num.split(".", 1)[1]) if "." in num else 0


def _group(int_text: str) -> str:
    return f"{int(int_text):,}"


def format_result(v: Fraction, operands: list[str], expr: str, context: str = "") -> str | None:
    """``v`` written as the chain writes its numbers (see the module docstring); None when it is too long."""
    pct = bool(operands) and re.fullmatch(r"[\d\s.,+\-−–()%$]*", expr) is not None and \
        len(re.findall(rf"(?:{_NUM})\s*%", expr)) == len(operands)
    if pct:  # "20% + 5% =" -> "25%"
        v = v * 100
    sign = "-" if v < 0 else ""
    a = abs(v)
    places = max((_places(n) for n in operands), default=0)
    fraction_style = _FRACTION.search(expr) is not None or re.search(r"=\s*-?\d+/\d+(?![\d.])", context) is not None
    if a.denominator == 1:
        body = str(a.numerator)
    elif fraction_style and "." not in expr and not pct:
        body = f"{a.numerator}/{a.denominator}"
    else:
        exact = next((k for k in range(MAX_DECIMALS + 1) if (10**k) % a.denominator == 0), None)
        p = max(exact, places) if exact is not None else max(places, 2)  # 2.50 * 3 = 7.50; 10 / 3 = 3.33
        q = (a * 10**p + Fraction(1, 2)).__floor__()  # round half up
        s = str(q).rjust(p + 1, "0")
        body = f"{s[:-p]}.{s[-p:]}" if p else s
    if "," in "".join(operands):
        head, dot, rest = body.partition(".")
        if "/" not in head:
            body = _group(head) + dot + rest
    digits = sum(c.isdigit() for c in body)
    if digits > MAX_DIGITS:
        return None
    out = sign + ("$" if "$" in expr else "") + body + ("%" if pct else "")
    return out


def result_for(text: str) -> str | None:
    """The text to write next when ``text`` ends with an arithmetic expression and ``=`` (or ``= ``); else None.

    ``"12 + 30 ="`` -> ``" 42"``; ``"12+30="`` -> ``"42"``; ``"25% of 96 = "`` -> ``"24"``; ``"2x + 3 ="`` -> None.
    """
    if text.endswith("= "):
        body, lead = text[:-2], ""
    elif text.endswith("="):
        body = text[:-1]
        lead = " " if body[-1:].isspace() else ""
    else:
        return None
    line = body[body.rfind("\n") + 1:]
    if len(line) > MAX_EXPR_CHARS:
        line = line[-MAX_EXPR_CHARS:]
    if not line.strip() or line.rstrip()[-1:] in ("=", "<", ">", "!", ":"):  # "==", "<=", ">=", "!=", ":="
        return None
    norm = normalize(line)
    m = _TAIL.search(norm)
    tail = m.group(0) if m else ""
    if not tail.strip() or any(p.search(tail) for p in _NOT_ARITH):
        return None
    start = len(norm) - len(tail)
    glued = start > 0 and (tail[:1].isdigit() or tail[:1] in "(.-−$") and (norm[start - 1].isalnum() or norm[start - 1] in ":;_'\"")
    if glued:  # "x2 + 3", "3:4 + 1": part of something that is not arithmetic
        return None
    toks = tail.split()
    context = body[: len(body) - len(line)] + line[: max(0, len(line) - len(tail))]
    for i in range(len(toks)):
        dropped = " ".join(toks[:i])
        if dropped and dropped[-1] in _OPS_AT_END:
            return None  # "2x + 3 * 4": the expression continues into a variable
        cand = " ".join(toks[i:])
        first = cand[:1]
        if not (first.isdigit() or first in ".($" or (first in "-−" and cand[1:2] != "" and cand[1:2] in "0123456789($")):
            continue
        expr = cand.replace("$", "")
        try:
            v, ops = evaluate(expr)
        except ArithError as e:
            if "zero" in str(e) or "too large" in str(e):
                return None  # left to the model
            continue
        if ops < 1:
            return None  # a lone number is not an expression
        operands = re.findall(_NUM, expr)
        out = format_result(v, operands, cand, context + dropped)
        return None if out is None else lead + out
    return None


# ------------------------------------------------------------------------------------------- token level


@dataclass
class CalcState:
    """One sequence's calculator state, kept across generation steps (and batch pruning)."""

    queue: list[int] = field(default_factory=list)  # forced token ids still to emit
    ban: int = 0  # 1: forbid number-extending tokens next step; 2: forbid digits if a lone "."/"," came next
    forced: int = 0  # results forced so far
    forced_texts: list[str] = field(default_factory=list)


class _Vocab:
    """Token-id classes of one tokenizer, computed once (the decoded text of each id after an anchor)."""

    def __init__(self, tok: Any):
        n = len(tok)
        anchor = tok("a", add_special_tokens=False)["input_ids"][-1:]
        base = tok.decode(anchor)
        texts = tok.batch_decode([anchor + [i] for i in range(n)], skip_special_tokens=False)
        texts = [t[len(base):] if t.startswith(base) else t for t in texts]
        special = set(getattr(tok, "all_special_ids", []) or [])
        self.size = n
        self.eq_end = {i for i, t in enumerate(texts) if i not in special and t.rstrip(" ").endswith("=")}
        self.space = {i for i, t in enumerate(texts) if t and t.strip(" ") == ""}
        self.extends = [i for i, t in enumerate(texts) if i not in special and (t[:1].isdigit() and t[:1].isascii()
                                                                                or re.match(r"[.,]\d", t))]
        self.digit = [i for i, t in enumerate(texts) if i not in special and t[:1].isdigit() and t[:1].isascii()]
        self.sep = {i for i, t in enumerate(texts) if t in (".", ",")}
        self._masks: dict[tuple[int, str, str], Any] = {}

    def mask(self, which: str, width: int, device: Any):
        key = (width, str(device), which)
        if key not in self._masks:
            import torch

            m = torch.zeros(width, dtype=torch.bool, device=device)
            ids = [i for i in (self.extends if which == "extends" else self.digit) if i < width]
            if ids:
                m[torch.tensor(ids, device=device)] = True
            self._masks[key] = m
        return self._masks[key]


_VOCABS: dict[int, tuple[Any, _Vocab]] = {}
_VOCAB_LOCK = threading.Lock()


def _vocab_of(tok: Any) -> _Vocab:
    with _VOCAB_LOCK:
        hit = _VOCABS.get(id(tok))
        if hit is None or hit[0] is not tok:
            hit = (tok, _Vocab(tok))
            _VOCABS[id(tok)] = hit
        return hit[1]


class Calculator:
    """Forces exact arithmetic results into a batch of sequences; see the module docstring.

    ``apply(scores, last2, tail, states)`` masks ``scores`` (``[batch, vocab]`` logits of the next token) in
    place: ``last2[j]`` are row ``j``'s last two token ids, ``tail(j, n)`` its last ``n`` ids, ``states[j]`` its
    :class:`CalcState`. ``lock`` guards the tokenizer (``serve`` shares it between threads).
    """

    def __init__(self, tok: Any, lock: Any = None, tail_tokens: int = TAIL_TOKENS):
        self.tok, self.tail_tokens = tok, tail_tokens
        self.lock = lock or nullcontext()
        with self.lock:
            self.vocab = _vocab_of(tok)

    def forced_ids(self, tail_ids: list[int], forced_text: str) -> list[int] | None:
        """Token ids of ``forced_text`` after ``tail_ids``, such that the decoded text round-trips; None if none do."""
        tok = self.tok
        tail_text = tok.decode(tail_ids, skip_special_tokens=True)
        target = tail_text + forced_text
        tries = []
        k = min(3, len(tail_ids))
        if k:
            ctx = tail_ids[-k:]
            enc = tok(tok.decode(ctx, skip_special_tokens=True) + forced_text, add_special_tokens=False)["input_ids"]
            if enc[:k] == ctx and len(enc) > k:
                tries.append(enc[k:])
        tries.append(tok(forced_text, add_special_tokens=False)["input_ids"])
        for ids in tries:
            if ids and tok.decode(tail_ids + ids, skip_special_tokens=True) == target:
                return ids
        return None

    def apply(self, scores: Any, last2: Sequence[Sequence[int]], tail: Callable[[int, int], list[int]],
              states: Sequence[CalcState]) -> None:
        v = self.vocab
        width = scores.shape[-1]
        for j, st in enumerate(states):
            if st.queue:
                self._force(scores, j, st)
                continue
            last = last2[j]
            if st.ban == 1:
                scores[j].masked_fill_(v.mask("extends", width, scores.device), float("-inf"))
                st.ban = 2
                continue
            if st.ban == 2:
                st.ban = 0
                if last and last[-1] in v.sep:  # "42." then a digit would make it 42.5
                    scores[j].masked_fill_(v.mask("digit", width, scores.device), float("-inf"))
                    continue
            if not last:
                continue
            t = last[-1]
            if not (t in v.eq_end or (t in v.space and len(last) > 1 and last[-2] in v.eq_end)):
                continue
            ids = tail(j, self.tail_tokens)
            with self.lock:
                text = self.tok.decode(ids, skip_special_tokens=True)
                res = result_for(text)
                forced = self.forced_ids(ids, res) if res else None
            if forced:
                st.queue = list(forced)
                st.forced += 1
                st.forced_texts.append(res)
                self._force(scores, j, st)

    @staticmethod
    def _force(scores: Any, j: int, st: CalcState) -> None:
        t = st.queue.pop(0)
        scores[j].fill_(float("-inf"))
        scores[j, t] = 0.0
        if not st.queue:
            st.ban = 1
