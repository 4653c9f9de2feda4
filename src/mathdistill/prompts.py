"""The seed's system prompts (chosen by the question's language) and how a prompt becomes chat messages.

Training and eval render a problem the same way: ``system`` = the instruction, ``user`` = the question,
through the student's own chat template (so no default system prompt is added on top).
"""

from __future__ import annotations

from typing import Any

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
    msgs = [{"role": "system", "content": instruction}, {"role": "user", "content": question}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs
