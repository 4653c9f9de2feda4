"""Text clean-up before an answer is looked for: width, ``<think>``, what follows the answer, LaTeX shorthand.

Every function here is a pure ``str -> str`` (or a test on a string) and runs in time linear in its input,
so the grader's fast path stays fast and a pathological output cannot hang it.
"""

from __future__ import annotations

import re

# full-width ASCII block (digits, letters, ％＄，．：（）＋－ ...) -> ASCII; odd spaces and minus signs -> ASCII
_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_WIDTH.update({0x3000: " ", 0x00A0: " ", 0x2009: " ", 0x202F: " ", 0x2212: "-", 0xFE63: "-", 0x2044: "/",
               0x2013: "-"})
_WIDTH_TABLE = str.maketrans(_WIDTH)


def to_ascii(text: str) -> str:
    """Full-width digits and punctuation (``１２，３４５．５％``), odd spaces and the minus sign ``−`` as ASCII."""
    return text if text.isascii() else text.translate(_WIDTH_TABLE)


# ------------------------------------------------------------------------------------ hidden reasoning

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THOUGHT_END = "<|end_of_thought|>"  # Sky-T1 / Bespoke style: <|begin_of_thought|> ... <|end_of_thought|>


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks, an unclosed ``<think>`` and what follows it, and anything
    before a stray ``</think>``; text before ``<|end_of_thought|>`` (Sky-T1 style) is reasoning too."""
    if "<|" in text and _THOUGHT_END in text:
        text = text[text.rfind(_THOUGHT_END) + len(_THOUGHT_END):]
    if "hink>" not in text and "HINK>" not in text:
        return text
    text = _THINK_BLOCK.sub("", text)
    low = text.lower()
    if "</think>" in low:
        text = text[low.rfind("</think>") + len("</think>"):]
    low = text.lower()
    if "<think>" in low:
        text = text[: low.find("<think>")]
    return text


# ------------------------------------------------------------------------- text after the answer

# chat-template and end-of-text tokens: whatever follows one is not this answer
_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<|user|>",
                "<|assistant|>", "<|end_of_solution|>", "<｜end▁of▁sentence｜>", "</s>", "<|start_header_id|>")
# a new turn or a new few-shot question at the start of a line, or right after a finished sentence on the same
# line ("... is 5. Question: ..."; there only the unambiguous names, not "Problem:" or "Q:", which a chain may use)
_NEW_TURN = re.compile(r"\n[ \t]*(?:#+\s*)?(?:\*\*)?(?:Question|Human|User|Problem|Q|问题|题目|用户)(?:\*\*)?\s*(?:\d+\s*)?[:：]"
                       r"|(?:(?<=[.!?])[ \t]+|(?<=[。！？])[ \t]*)(?:\*\*)?(?:Question|Human|User|问题|用户)(?:\*\*)?\s*(?:\d+\s*)?[:：]")


_CHAT_RE = re.compile("|".join(re.escape(t) for t in _CHAT_TOKENS))


def cut_tail(text: str) -> str:
    """``text`` up to a chat-template token or a new few-shot turn ("Question:", "Human:", "问题：") that
    follows some content: a model that runs on is graded on what it wrote before."""
    if "<|" in text or "</s>" in text or "<｜" in text:
        m = _CHAT_RE.search(text)
        while m is not None and not text[: m.start()].strip():  # a token before any content: skip it
            text = text[m.end():]
            m = _CHAT_RE.search(text)
        if m is not None:
            text = text[: m.start()]
    if "\n" in text or ":" in text or "：" in text:
        m = _NEW_TURN.search(text)
        while m is not None:
            if text[: m.start()].strip():
                return text[: m.start()]
            m = _NEW_TURN.search(text, m.end())
    return text


# ------------------------------------------------------------------------------------ boxed answers

def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; ``\\boxed 5`` too."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx + (6 if text.startswith("\\boxed", idx) else 5):]
    m = re.match(r"\s*\{", rest)
    if not m:
        bare = re.match(r"\s+([^\s$]+)", rest)  # "\boxed 5"
        return bare.group(1) if bare else None
    depth = 0
    for j in range(m.end() - 1, len(rest)):
        if rest[j] == "{":
            depth += 1
        elif rest[j] == "}":
            depth -= 1
            if depth == 0:
                return rest[m.end(): j].strip()
    return None  # unbalanced: the output was cut


# what may stand between boxes that together are one answer ("\boxed{1} and \boxed{-2}",
# "\boxed{2} \quad \text{and} \quad \boxed{6}", "\(\boxed{1}\) papers and \(\boxed{2}\)", "y_1 = \boxed{..} and y_2 = ")
_BOX_GAP_TOKEN = re.compile(r"[\s,;$.:]+|\\q?quad|\\[()\[\]]|\\text\{[^{}\d]{0,30}\}|\band\b|\bor\b|和|或|以及|及|"
                            r"[A-Za-z](?:_\{?\w{1,3}\}?)?\s*=|[A-Za-z]{1,12}|\([a-z]\)")
_BOX_SEP = re.compile(r",|;|\band\b|\bor\b|和|或|及|\\q?quad")
_SENTENCE_WORDS = {"is", "are", "was", "were", "not", "no", "wrong", "incorrect", "but", "so", "then", "thus", "hence",
                   "therefore", "the", "answer", "gives", "get", "gets", "becomes", "final", "instead", "actually",
                   "wait", "correct", "corrected", "correction", "revised", "fixed", "recheck", "check", "mistake", "error", "if", "than"}
_BOX_GAP_WORDS = 2  # at most this many other words ("papers", "for part (a)") between boxes


def _box_gap(gap: str) -> bool:
    """Is ``gap`` only a separator between boxes of one answer (a comma, "and", ``\\quad``, a name ``=``,
    at most two other words) rather than a sentence?"""
    if len(gap) > 80:
        return False
    toks = []
    i = 0
    while i < len(gap):
        m = _BOX_GAP_TOKEN.match(gap, i)
        if m is None:
            return False
        toks.append(m.group(0))
        i = m.end()
    words = [t.lower() for t in toks if t.isalpha() and t.isascii() and t not in ("and", "or")]
    if any(w in _SENTENCE_WORDS for w in words):
        return False  # "\\boxed{3} is wrong, \\boxed{5}": a correction, not a list
    return not gap.strip() or (bool(_BOX_SEP.search(gap)) and len(words) <= _BOX_GAP_WORDS)


def _box_at(text: str, idx: int) -> tuple[str, int] | None:
    """``(content, end)`` of the ``\\boxed{...}`` starting at ``idx``, or None when unbalanced."""
    j = text.find("{", idx)
    if j < 0 or text[idx + 6: j].strip():
        return None
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1: k].strip(), k + 1
    return None


def final_boxes(text: str) -> str | None:
    """The last ``\\boxed{}``; when boxes stand side by side at the end (``\\boxed{1}, \\boxed{2}``), their
    contents joined as a list (``1, 2``)."""
    last = last_boxed(text)
    if last is None or text.count("\\boxed") < 2:
        return last
    window = text[-3000:]
    spans = []
    i = window.find("\\boxed")
    while i >= 0:
        got = _box_at(window, i)
        if got is not None:
            spans.append((i, got[1], got[0]))
        i = window.find("\\boxed", i + 6)
    if len(spans) < 2 or spans[-1][2] != last:
        return last
    parts = [spans[-1]]
    for prev in reversed(spans[:-1]):
        if prev[1] > parts[0][0] or not _box_gap(window[prev[1]: parts[0][0]]):
            break
        parts.insert(0, prev)
    return ", ".join(p[2] for p in parts) if len(parts) > 1 else last


def max_depth(s: str) -> int:
    """Deepest brace/bracket nesting in ``s``."""
    d = best = 0
    for ch in s:
        if ch in "{([":
            d += 1
            best = max(best, d)
        elif ch in "})]":
            d -= 1
    return best


# ----------------------------------------------------------------------------------- LaTeX shorthand

_ARG = r"(\{[^{}]*\}|\\[A-Za-z]+|[0-9A-Za-z])"  # one argument: {group}, a command, or one character
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*" + _ARG + r"\s*" + _ARG)
_SQRT_SHORT = re.compile(r"\\sqrt\s*(?![\s{\[])" + _ARG)
_SQRT_PAREN = re.compile(r"\\sqrt\s*\(([^()]*)\)")
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_SUP_RUN = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+")


# Unicode math symbols as LaTeX; vulgar fractions as " a/b" so "3½" reads as the mixed number 3 1/2
_SYMBOLS = (("×", "\\times "), ("·", "\\cdot "), ("÷", "/"), ("√", "\\sqrt"), ("π", "\\pi "), ("∞", "\\infty "),
            ("≤", "\\le "), ("≥", "\\ge "), ("≠", "\\neq "), ("∪", "\\cup "), ("±", "\\pm "), ("½", " 1/2"),
            ("⅓", " 1/3"), ("⅔", " 2/3"), ("¼", " 1/4"), ("¾", " 3/4"))


def _braced(arg: str) -> str:
    return arg if arg.startswith("{") else "{" + arg + "}"


def expand_shorthand(s: str) -> str:
    """``\\frac34``, ``\\frac{3}4``, ``\\dfrac``, ``\\tfrac`` -> ``\\frac{3}{4}``; ``\\sqrt5``, ``\\sqrt(5)`` -> ``\\sqrt{5}``;
    Unicode superscripts ``10⁻⁵`` -> ``10^{-5}``; ``×``, ``·``, ``√``, ``π``, ``≤``, ``±``, ``½`` ... as LaTeX."""
    if not s.isascii():
        s = _SUP_RUN.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPT) + "}", s)
        for sym, tex in _SYMBOLS:
            if sym in s:
                s = s.replace(sym, tex)
    if "\\" in s:
        if "frac" in s:
            s = _FRAC_SHORT.sub(lambda m: "\\frac" + _braced(m.group(1)) + _braced(m.group(2)), s)
        if "\\sqrt" in s:
            if "\\sqrt(" in s:
                s = _SQRT_PAREN.sub(r"\\sqrt{\1}", s)  # "\\sqrt(2)": a root, not 4 times (2)
            s = _SQRT_SHORT.sub(lambda m: "\\sqrt" + _braced(m.group(1)), s)
    return s


# ------------------------------------------------------------------------------------ no answer given

# an output that stops on one of these was cut mid-chain: its last number is not an answer
_CUT_END = re.compile(
    r"(?:[-+*/=^_(\[{<,:\\&]|\\(?:cdot|times|div|pm|mp|d?frac|sqrt|left|right|cos|sin|tan|cot|log|ln|sum|prod|int|quad|le|ge|leq|geq|neq|"
    r"approx|equiv|in|cup|cap|begin|binom)|\b(?:so|thus|therefore|hence|then|is|are|be|"
    r"equals?|gives?|get|of|to|the|a|an|and|or|that|we|with|by|for|as|because|since|which|where|becomes)"
    r"|所以|因此|则|得|即|为|是)\s*$", re.I)
_OPENERS = (("\\(", "\\)"), ("\\[", "\\]"), ("\\begin{", "\\end{"))
_UNDETERMINED = re.compile(
    r"can ?not be (?:uniquely )?determined|can't be (?:uniquely )?determined|(?:not|insufficient) enough information|"
    r"insufficient information|impossible to (?:determine|tell)|无法(?:确定|判断|求出|计算)|不能确定|条件不足", re.I)


def looks_cut(text: str) -> bool:
    """Does ``text`` stop mid-chain: inside a formula (``\\(`` or ``\\[`` left open, a LaTeX command), on an
    operator, a comma or colon, or on a word such as "so" / "the" that must be followed by more?"""
    tail = text[-600:].rstrip()
    if not tail:
        return False
    if _CUT_END.search(tail[-40:]):
        return True
    for o, c in _OPENERS:
        if tail.rfind(o) > tail.rfind(c):
            return True
    if "$" in tail:  # an odd number of $ in the last paragraph, LaTeX after the last one: a formula left open
        para = tail[tail.rfind("\n\n") + 1:].replace("\\$", "").replace("$$", "$")
        last = para.rfind("$")
        return para.count("$") % 2 == 1 and any(ch in para[last:] for ch in "\\^{_")
    return False


def says_undetermined(text: str) -> bool:
    """Does the end of ``text`` say the answer cannot be determined?"""
    t = text[-400:]
    if "etermin" not in t and "nformation" not in t and "mpossible" not in t and "无法" not in t \
            and "不能确定" not in t and "条件不足" not in t:
        return False  # substring tests first: much cheaper than the regex
    return bool(_UNDETERMINED.search(t))
