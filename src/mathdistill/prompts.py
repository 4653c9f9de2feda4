"""The seed's system prompts (chosen by the question's language) and how a prompt becomes chat messages.

Training and eval render a problem the same way: ``system`` = the instruction, ``user`` = the question,
through the student's own chat template (so no default system prompt is added on top). The
``dataset_info.json`` curate writes tells LLaMA-Factory the same (io.ALPACA_COLUMNS), and a LLaMA-Factory-style
Alpaca file (``system``, ``history`` columns) is read the way LLaMA-Factory renders it (:func:`alpaca_rows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError

EN_PROMPT = ("Please think through the following math problem step by step and generate the answer. "
             "The problem is as follows:")
ZH_PROMPT = "请你一步一步思考下面的数学问题并生成答案,问题如下:"

# Used when a tokenizer has no chat template (tiny test tokenizers): ChatML, as SmolLM2 and Qwen use.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def instruction_for(lang: str) -> str:
    return ZH_PROMPT if lang == "zh" else EN_PROMPT


def messages(instruction: str, question: str, answer: str | None = None) -> list[dict[str, Any]]:
    """system (the instruction), user (the question), and the assistant's answer when given. An empty
    instruction sends no system turn, so the chat template's own default applies (as in LLaMA-Factory)."""
    msgs = [{"role": "system", "content": instruction}] if instruction else []
    msgs.append({"role": "user", "content": question})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def alpaca_rows(rows: Any, path: str | Path) -> list[Any]:
    """Alpaca rows as mathdistill's train renders them: ``instruction`` -> system turn, ``input`` -> user turn.

    A row with a ``system`` or ``history`` column, or with the question in ``instruction`` and no ``input``
    (LLaMA-Factory's plain Alpaca, as its alpaca_en_demo), is LLaMA-Factory style and is read as LLaMA-Factory's
    AlpacaDatasetConverter renders it (src/llamafactory/data/converter.py): ``system`` -> system turn,
    ``instruction`` and ``input`` joined by a newline -> user turn. A non-empty ``history`` (earlier turns) is
    refused with one line (training is single-turn). Other rows, and non-objects (counted by the caller),
    are returned as they are.

    Raises :class:`UserError` for a row with history, or when ``rows`` is not a non-empty list.
    """
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected a non-empty JSON list of Alpaca rows (instruction, input, output)")
    out = []
    for i, r in enumerate(rows):
        plain_lf = isinstance(r, dict) and not (isinstance(r.get("input"), str) and r["input"].strip())
        if not isinstance(r, dict) or ("system" not in r and "history" not in r and not plain_lf):
            out.append(r)  # mathdistill's own row: the question is always in input
            continue
        if r.get("history"):
            raise UserError(f"{path}:#{i}: a LLaMA-Factory 'history' (earlier turns) is not supported: mathdistill "
                            "trains single-turn rows; drop the history column or split each turn into its own row")
        user = "\n".join(str(x) for x in (r.get("instruction"), r.get("input")) if isinstance(x, str) and x)
        out.append({**{k: v for k, v in r.items() if k not in ("system", "history")},
                    "instruction": str(r.get("system") or ""), "input": user})
    return out
