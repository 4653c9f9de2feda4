"""Writes the exported-file fixtures in this folder (run it to regenerate them; the bytes are committed).

Each file has the shape a real tool writes, rebuilt from public docs and bug reports:
- batch_output.jsonl: an OpenAI Batch API output file (``custom_id``, ``response.status_code``,
  ``response.body`` = a chat.completion, ``error``); one line repeated exactly (a resubmitted batch), one
  expired request, one 400, one request with n=2 whose second choice hit the token limit, one truncated
  answer with no tags. batch_problems.jsonl: the problems it answers.
- problems_mixed.jsonl: a problems file as pandas / a MATH-style export writes it: integer ids and answers,
  a float answer, extra columns (level, subject), one row without a question.
- predictions_pandas.jsonl / .csv: predictions whose token column is ``123.0`` (pandas turns an int column
  with a missing value into floats).
- traces_to_json.json: JSON Lines in a ``.json`` file, as ``datasets.Dataset.to_json`` writes, whose first
  record is longer than 4 KB (an R1-style trace).
- skythought.json: Sky-T1 / SkyThought rows (ShareGPT ``system`` + ``conversations``) with
  ``<|begin_of_thought|>`` and ``<|begin_of_solution|>`` blocks.
- reasoning_traces.jsonl: an R1-distill output holding only ``</think>`` (the chat template opened it), a
  ``<reasoning>``/``<answer>`` output (GRPO recipes), and a plain one.
- multiple_choice.jsonl: options in their own field (a list; AQuA-style already-lettered options).
- lf_alpaca.json / lf_alpaca_history.json: LLaMA-Factory-style Alpaca rows with ``system`` and ``history``.
"""

import csv
import json
from pathlib import Path

HERE = Path(__file__).parent


def dump(name: str, rows, lines: bool = True) -> None:
    p = HERE / name
    if lines:
        p.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                     encoding="utf-8")
    else:
        p.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def completion(cid: str, choices: list[tuple[str, str]], model: str = "gpt-4o-mini-2024-07-18") -> dict:
    return {"id": cid, "object": "chat.completion", "created": 1732000000, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c, "refusal": None},
                         "logprobs": None, "finish_reason": fr} for i, (c, fr) in enumerate(choices)],
            "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
            "system_fingerprint": "fp_0ba0d124f1"}


def batch_line(n: int, custom_id: str, body: dict | None = None, status: int = 200, error: dict | None = None) -> str:
    return json.dumps({"id": f"batch_req_{n:04d}", "custom_id": custom_id,
                       "response": None if body is None else {"status_code": status, "request_id": f"req_{n:04d}",
                                                              "body": body},
                       "error": error})


batch_problems = [
    {"id": "p1", "question": "Tom has 3 apples and buys 5 more. How many apples does he have?", "answer": "8"},
    {"id": "p2", "question": "A box holds 12 eggs. How many eggs are in 4 boxes?", "answer": "48"},
    {"id": "p3", "question": "What is 9 - 4?", "answer": "5"},
    {"id": "p4", "question": "What is 6 * 7?", "answer": "42"},
    {"id": "p5", "question": "What is 10 + 15?", "answer": "25"},
]
first = batch_line(1, "p1", completion("chatcmpl-A1", [("3 + 5 = 8\n#### 8", "stop")]))
batch = [
    first,
    batch_line(2, "p2", completion("chatcmpl-A2", [("Each box holds 12 eggs. For 4 boxes we add 12 four times: "
                                                     "12 + 12 = 24, 24 + 12 = 36, and then", "length")])),
    first,  # the same output file appended twice (a resubmitted batch)
    batch_line(3, "p3", error={"code": "batch_expired",
                               "message": "This request could not be executed before the completion window expired."}),
    batch_line(4, "p4", {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                   "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                                   "param": "max_tokens", "code": "unsupported_parameter"}}, status=400),
    batch_line(5, "p5", completion("chatcmpl-A5", [("10 + 15 = 25\n#### 25", "stop"),
                                                   ("Let me add 10 and 15 carefully, one digit at a", "length")])),
    batch_line(6, "p1", completion("chatcmpl-A6", [("5 + 3 = 8\n#### 8", "stop")])),  # a real second sample
]

problems_mixed = [
    {"id": 1, "question": "What is 2 + 3?", "answer": 5, "level": "Level 1", "subject": "Prealgebra"},
    {"id": 2, "question": "What is half of 5?", "answer": 2.5, "level": 2, "subject": "Prealgebra"},
    {"id": "3", "question": "What is 10 - 4?", "answer": "6", "extra": {"source_row": 17}},
    {"id": 4, "problem": "A row whose question is under another name", "answer": 1},
]
mixed_batch = [batch_line(10 + i, str(i), completion(f"chatcmpl-M{i}", [(f"#### {a}", "stop")]))
               for i, a in ((1, 5), (2, 2.5), (3, 6))]

predictions_pandas = [
    {"problem_id": "q0", "output": "0 + 2 = 2\n#### 2", "tokens": 123.0},
    {"problem_id": "q1", "output": "<|begin_of_thought|>Is it \\boxed{4}? No: 1 + 2 = 3.<|end_of_thought|>"
                                   "<|begin_of_solution|>#### 3<|end_of_solution|>", "tokens": 45.0},
    {"problem_id": "q2", "output": "Okay, 2 + 2 is 4, so the answer is 9 minus 5.\n</think>\n\nThe answer is 4.",
     "tokens": 30},
    {"problem_id": "q3", "output": "<reasoning>A first guess, \\boxed{6}; no: 3 + 2 = 5</reasoning>\n<answer>\n5\n</answer>",
     "tokens": "12.0"},
]

LONG = " ".join(f"Step {i}: we check that {i} + {i} = {2 * i}, which holds, and move on to the next one." for i in range(70))
to_json = [
    {"problem_id": "p1", "question": "Tom has 3 apples and buys 5 more. How many apples does he have?",
     "content": f"<think>\n{LONG}\n</think>\n\n3 + 5 = 8\n#### 8", "finish_reason": "stop"},
    {"problem_id": "p2", "question": "A box holds 12 eggs. How many eggs are in 4 boxes?",
     "content": f"<think>\n{LONG}\n</think>\n\n12 * 4 = 48\n#### 48", "finish_reason": "stop"},
    {"problem_id": "p3", "question": "What is 9 - 4? (in \u00b0C)", "content": "9 - 4 = 5\n#### 5", "finish_reason": "stop"},
]

SKY_SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
              "process before providing the final precise and accurate solutions. Please structure your response "
              "into two main sections: Thought and Solution.")
skythought = [
    {"system": SKY_SYSTEM, "conversations": [
        {"from": "user", "value": "Return your final response within \\boxed{}. What is 3 + 5?"},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nOkay, so I need to add 3 and 5. 3 + 5 = 8.\n\n"
                                       "<|end_of_thought|>\n\n<|begin_of_solution|>\n\n3 + 5 = 8, so the answer is "
                                       "\\boxed{8}.\n\n<|end_of_solution|>"}]},
    {"system": SKY_SYSTEM, "conversations": [
        {"from": "user", "value": "Return your final response within \\boxed{}. What is 6 * 7?"},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nSix sevens: 6 * 7 = 42. Let me double-check, "
                                       "7 * 6 = 42.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
                                       "6 * 7 = 42\n\n\\boxed{42}\n\n<|end_of_solution|>"}]},
    {"system": SKY_SYSTEM, "conversations": [
        {"from": "user", "value": "Return your final response within \\boxed{}. What is 100 - 1?"},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nHundred minus one, that is 99, but wait, let me "
                                       "recount the"}]},  # cut off inside the thought
]

reasoning_traces = [
    {"problem_id": "p1", "content": "Okay, Tom has 3 apples and buys 5 more, 3 + 5 = 8.\n</think>\n\n"
                                    "Tom has **8** apples.\n#### 8"},
    {"problem_id": "p2", "content": "<reasoning>\n12 * 4 = 48\n</reasoning>\n<answer>\n#### 48\n</answer>"},
    {"problem_id": "p3", "content": "9 - 4 = 5\n#### 5"},
]

multiple_choice = [
    {"id": "mc1", "question": "Which number is prime?", "options": ["4", "6", "7", "9"], "answer": "C",
     "subject": "number_theory"},
    {"id": "mc2", "question": "A pen costs 3 dollars. What do 7 pens cost?",
     "options": ["A)18", "B)21", "C)24", "D)27"], "answer": "B"},
    {"id": "mc3", "question": "A row that lost its options", "answer": "A"},
]

lf_alpaca = [
    {"system": "You are a careful math tutor.", "instruction": "Solve the problem.", "input": "What is 2 + 3?",
     "output": "2 + 3 = 5\n#### 5", "history": []},
    {"system": "Answer with the number only.", "instruction": "What is 4 + 4?", "input": "", "output": "8"},
]
lf_alpaca_history = [
    {"system": "You are a careful math tutor.", "instruction": "And times 2?", "input": "", "output": "10",
     "history": [["What is 2 + 3?", "5"]]},
]

if __name__ == "__main__":
    dump("batch_problems.jsonl", batch_problems)
    dump("batch_output.jsonl", batch)
    dump("problems_mixed.jsonl", problems_mixed)
    dump("batch_output_mixed.jsonl", mixed_batch)
    dump("predictions_pandas.jsonl", predictions_pandas)
    with (HERE / "predictions_pandas.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["problem_id", "output", "tokens"])
        w.writerows([r["problem_id"], r["output"], float(r["tokens"])] for r in predictions_pandas)
    dump("traces_to_json.json", to_json)
    dump("skythought.json", skythought, lines=False)
    dump("reasoning_traces.jsonl", reasoning_traces)
    dump("multiple_choice.jsonl", multiple_choice)
    dump("lf_alpaca.json", lf_alpaca, lines=False)
    dump("lf_alpaca_history.json", lf_alpaca_history, lines=False)
