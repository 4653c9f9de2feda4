"""Writes the messy curate fixtures in this folder (run it to regenerate them; the bytes are committed).

Real exports are messy: a BOM, CRLF line ends, blank lines, lines that are not JSON, null fields, an unclosed
<think>, full-width digits and punctuation, Chinese and English mixed. Each problem id exercises one step.
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
LONG_OUT = ("The farmer starts with 100 sheep in the big field near the river. At the market he sells 37 of the "
            "sheep to a neighbour who needs them for his own farm. To find how many sheep remain in the field we "
            "subtract the sheep he sold from the sheep he had at the start of the day. 100 - 37 = 63. So the farmer "
            "still has 63 sheep in the field at the end of the day.\nThe answer is 63.")
SHEEP_Q = ("A farmer has 100 sheep in a big field near the river and sells 37 of them at the market on {day} "
           "morning to a neighbour. How many sheep remain in the field?")


def line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


problems = [
    {"id": "p01", "question": "Tom has 3 apples and buys 5 more. How many apples does he have now?", "answer": "8", "source": "word"},
    {"id": "p02", "question": "小明有 12 个苹果，吃掉了 4 个，还剩几个？", "answer": "8", "source": "zh"},
    {"id": "p03", "question": "A shirt costs $1,250 and is discounted by 20%. What is the new price in dollars?", "answer": "1000", "source": "word"},
    {"id": "p04", "question": "What percent of 80 is 20?", "answer": "25%", "source": "word"},
    {"id": "p05", "question": "一本书 15 元，买 3 本需要多少元？", "answer": "45", "source": "zh"},
    {"id": "p06", "question": "A train travels 60 miles per hour for 2 hours. How far does it go?", "answer": None, "source": "word"},
    {"id": "p07", "question": "一个长方形长 6 米，宽 4 米，面积是多少平方米？", "source": "zh"},
    {"id": "p08", "question": "Sara bakes 24 cookies for the school fair and sells 18 of them to her classmates before lunch. How many cookies are left?", "answer": "6", "source": "word"},
    {"id": "p09", "question": "What is 7 * 6?", "answer": "42", "source": "arith"},
    {"id": "p10", "question": SHEEP_Q.format(day="Sunday"), "answer": "63", "source": "word"},
    {"id": "p11", "question": SHEEP_Q.format(day="Saturday"), "answer": "63", "source": "word"},
    {"id": "p12", "question": "What is 9 + 9?", "answer": "18", "source": "arith"},
    {"id": "p13", "question": "计算 １２ + ３５", "answer": "47", "source": "zh"},
]
p_lines = [line(p) for p in problems[:5]] + ["", "this line is not JSON", line({"id": "px", "question": None})] + \
          [line(p) for p in problems[5:]]
# BOM, CRLF line ends
(HERE / "problems.jsonl").write_bytes(("\ufeff" + "\r\n".join(p_lines) + "\r\n").encode("utf-8"))

T = lambda pid, s, content, **kw: line({"problem_id": pid, "teacher": "t", "sample": s, "content": content, **kw})  # noqa: E731
traces = [
    T("p01", 0, "<think>3 + 5</think>3 + 5 = 8\nThe answer is 8."),
    T("p01", 1, "Tom starts with 3 apples. He buys 5 more apples. 3 + 5 = 8. So he has 8 apples now.\nThe answer is 8."),
    T("p01", 2, "3 + 5 = 9\nThe answer is 9."),
    T("p02", 0, "12 - 4 = 8\n答案是 8 个。"),
    T("p02", 1, "<think>先算 12 - 4，等于"),  # unclosed think: nothing visible
    T("p02", 2, None),  # null content
    "",
    T("p03", 0, "20% of 1,250 is 250. 1,250 - 250 = 1,000.\n#### $1,000"),
    T("p03", 1, "The new price is \\boxed{1000} dollars.", reasoning="0.8 * 1250 = 1000"),
    T("p04", 0, "20 / 80 = 0.25, so the answer is 25%."),
    T("p04", 1, "The answer is 0.25"),
    T("p04", 2, "The answer is 20%"),
    "{\"problem_id\": \"p05\", \"content\": broken",  # not JSON
    T("p05", 0, "15 × 3 = 45\r\n答案：４５元"),  # full-width answer, CRLF inside the text
    T("p05", 1, "15 * 3 = 35\n答案是35"),
    T("p06", 0, "60 * 2 = 120\nThe answer is 120 miles."),
    T("p06", 1, "It goes 120 miles.\n#### 120"),
    T("p06", 2, "60 + 2 = 62\nThe answer is 62"),
    T("p07", 0, "6 × 4 = 24\n答案是 24"),
    T("p07", 1, "6 + 4 = 10\n答案是 10"),
    T("p08", 0, "24 - 18 = 6\nThe answer is 6."),
    T("p09", 0, "7 * 6 = 43\nThe answer is 42."),  # right answer, wrong step
    T("p09", 1, "7 * 6 = 42\nThe answer is 42."),
    T("p10", 0, LONG_OUT),
    T("p11", 0, LONG_OUT.replace("neighbour", "neighbor")),  # a near-duplicate of p10's row
    T("p12", 0, "Let me compute 9 + 9 = 18 and then", finish_reason="length"),
    T("p12", 1, "9 + 9 = 18\nThe answer is 18.", finish_reason="stop"),
    T("p13", 0, "１２ + ３５ = ４７\n答案是４７"),
    line({"problem_id": None, "teacher": "t", "content": "orphan without id"}),
    line({"problem_id": "p99", "teacher": "t", "content": "unknown problem"}),
    line({"problem_id": "p01", "teacher": "t", "sample": 3, "content": ["not", "text"]}),
    "[1, 2, 3]",
    "\ufeff" + T("p12", 2, "9 + 9 = 18. The answer is 18 again, a longer way to say it."),  # a BOM mid-file
]
(HERE / "traces.jsonl").write_bytes(("\ufeff" + "\r\n".join(traces) + "\r\n\r\n").encode("utf-8"))

evals = [
    {"id": "e1", "question": "Sara bakes 24 cookies for the school fair and sells 18 of them to her classmates before lunch. How many cookies does she still have?", "answer": "6"},
    {"id": "e2", "question": "What is 6 * 7?", "answer": "42"},
]
(HERE / "eval.jsonl").write_text("".join(line(e) + "\n" for e in evals), encoding="utf-8")

# a platform export: question, reference and response in one CSV row, other column names
csv_rows = [
    "id,problem,gold,response,stop",
    'q1,"What is 2 + 2?",4,"2 + 2 = 4\nThe answer is 4.",stop',
    'q1,"What is 2 + 2?",4,"2 + 2 = 5\nThe answer is 5.",stop',
    'q2,"小红有 ５ 支笔，又买了 ２ 支，一共几支？",7,"5 + 2 = 7\n答案是７支。",stop',
    'q3,,,"no question",stop',
]
(HERE / "export.csv").write_bytes(("\ufeff" + "\r\n".join(csv_rows) + "\r\n").encode("utf-8"))
