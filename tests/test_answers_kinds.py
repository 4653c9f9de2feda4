"""The grader by kind of answer, as (output, reference, expected) tables in the Math-Verify style.

One table per family of fault the grader once had; each has rows that must be accepted and look-alike rows
that must not (a grader that says "correct" too often is as wrong as one that says it too rarely), in English
and in Chinese. The expected value is what a careful person would say.
"""

import time

import pytest

from mathdistill.answers import extract_answer, grade, is_correct

# --- LaTeX shorthand: \frac34, \frac{3}4, \sqrt5, \dfrac, \tfrac
SHORTHAND = [
    (r"$\frac34$", "3/4", True),
    (r"$\frac{3}4$", r"\frac{3}{4}", True),
    (r"$\frac3{4}$", "0.75", True),
    (r"The answer is $2\sqrt5$.", r"2\sqrt{5}", True),
    (r"\boxed{\dfrac{1}{3}}", r"\frac13", True),
    (r"\boxed{\tfrac{5}{2}}", "2.5", True),
    (r"So the ratio is $\frac13$.", r"\frac{1}{3}", True),  # a short output ending on a formula: the formula
    (r"答案是 $\frac34$", "3/4", True),
    (r"所以答案为 $\sqrt3$。", r"\sqrt{3}", True),
    (r"\boxed{\frac{\sqrt3}2}", r"\frac{\sqrt{3}}{2}", True),
    # look-alikes
    (r"$\frac34$", "34", False),
    (r"$\frac43$", "3/4", False),
    (r"$2\sqrt5$", r"2\sqrt{3}", False),
    (r"The answer is $\sqrt52$.", r"\sqrt{52}", False),  # \sqrt52 is \sqrt{5}\cdot 2
    (r"Final answer: $\frac13$", "13", False),
    (r"答案是 $\frac{1}{3}$", "3", False),
]

# --- leading-dot decimals (in the reference or the output)
LEADING_DOT = [
    ("The answer is 0.25.", ".25", True),
    (r"\boxed{.35625}", "0.35625", True),
    ("#### .5", "1/2", True),
    ("答案是 0.25", ".25", True),
    ("The answer is 0.25.", ".26", False),
    ("The answer is 25.", ".25", False),
    ("答案是 0.52", ".25", False),
]

# --- a sign after words stays a sign; a minus between terms does not
SIGN = [
    ("so the least value is -7.", "-7", True),
    ("Thus the minimum equals -12", "-12", True),
    ("The temperature dropped to -3 degrees.", "-3", True),
    ("所以最小值是 -7。", "-7", True),
    ("最小值为－５", "-5", True),
    ("so the least value is -7.", "7", False),
    ("We get 10 - 7", "-7", False),
    ("最小值是 7", "-7", False),
    (r"so $\tan x = \sec 40^\circ - 1$", "-1", False),  # after a LaTeX command: a minus between terms
    (r"we get $\pi - 3$", "-3", False),
]

# --- intervals and inequalities
INTERVALS = [
    (r"\boxed{-3 < x \le 4}", "(-3, 4]", True),
    (r"\boxed{x \ge 2}", r"[2, \infty)", True),
    (r"\boxed{(-\infty, 2) \cup (3, \infty)}", r"(-\infty,2)\cup(3,\infty)", True),
    (r"The solution set is $\boxed{[1, 5]}$.", "[1,5]", True),
    (r"答案是 $x \in [-2, 7]$", "[-2,7]", True),
    (r"\boxed{-3 < x < 4}", "(-3, 4]", False),
    (r"\boxed{x > 2}", r"[2, \infty)", False),
    (r"\boxed{[1, 5)}", "[1,5]", False),
    (r"答案是 $(1, 5)$", "[1,5]", False),
    ("The answer is (2, infinity).", r"(2,\infty)", True),
    ("The answer is (2, infinity).", r"[2,\infty)", False),
]

# --- sets and lists, in any order; "x = a and x = b"
LISTS = [
    (r"The solutions are $x = -1$ and $x = 6$, so \boxed{x = -1 \text{ and } x = 6}", "-1, 6", True),
    (r"\boxed{6, -1}", "-1, 6", True),
    (r"\boxed{x=-1, x=6}", "-1,6", True),
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", True),
    ("答案是 -1 和 6", "-1, 6", True),
    (r"\boxed{-1 \text{ or } 6}", "6, -1", True),
    (r"\boxed{x = -1}", "-1, 6", False),
    (r"\boxed{-1, 5}", "-1, 6", False),
    (r"\boxed{-1, 6, 7}", "-1, 6", False),
    ("答案是 -1 和 5", "-1, 6", False),
    (r"$19, 46, \text{ and } 82$", "19, 46, and 82", True),
    ("$21, 36, and 82$", "19, 46, and 82", False),
]

# --- side-by-side boxes, answer phrases followed by more text, a short sentence ending on a formula
FORMS = [
    (r"$\boxed{1}\boxed{2}$", "1,2", True),
    (r"so $n = \boxed{1}$ or $n = \boxed{-2}$", "1, -2", True),
    (r"First \boxed{3}. Then, correcting myself, \boxed{4}", "4", True),
    ("Final Answer: The final answer is $(0, 1)$. I hope it is correct.", "(0, 1)", True),
    ("Final Answer: The final answer is $(0, 1)$. I hope it is correct.", "[0, 1)", False),
    ("Final Answer: Jane started growing Sphere 3 hours ago. I hope it is correct.", "3", True),
    (r"Final Answer: The final answer is $14{,}916$. I hope it is correct.", "14916", True),
    (r"Therefore $x \geq 5$ is the solution.", "x >= 5", True),
    (r"We find that $x \lt 3$.", "x < 3", True),
    (r"Therefore $x \geq 5$ is the solution.", "x <= 5", False),
    (r"is $\boxed{32, 349}$", "32349", False),
    (r"is $\boxed{32,\! 349}$", "32349", True),
    ("最终答案：$\\frac{1}{2}$。希望正确。", "0.5", True),
]

# --- number forms: thousands separators and spaces, a decimal comma against a decimal point, numbers in words
NUMBER_FORMS = [
    ("The total is 7,425,000.", "7425000", True),
    (r"\boxed{12,\!000,\!023}", "12000023", True),
    ("1,22", "1.22", True),
    ("0,111", "0.111", True),
    ("Therefore, the probability that Alice wins is 2/3.", "2/3", True),
    ("答案是 3/4。", "0.75", True),
    ("AZYUK2A", "2", False),  # a digit inside a word is no answer
    ("1,22", "1.23", False),
    ("-2,1", "-2, 1", True),  # a list, not a decimal comma
    ("The answer is 1,000", "1", False),
    ("The answer is twelve.", "12", True),
    ("So the final answer is twenty-one", "21", True),
    ("The answer is one hundred and five.", "105", True),
    ("The answer is twelve.", "13", False),
    ("The answer is twenty", "21", False),
]

# --- \pm answers
PLUS_MINUS = [
    (r"\boxed{4 \pm \sqrt3}", r"4+\sqrt{3}, 4-\sqrt{3}", True),
    (r"\boxed{4-\sqrt{3}, 4+\sqrt{3}}", r"4 \pm \sqrt{3}", True),
    (r"所以 $x = \boxed{1 \pm \sqrt{2}}$", r"1+\sqrt2,1-\sqrt2", True),
    (r"\boxed{4 + \sqrt3}", r"4 \pm \sqrt{3}", False),
    (r"\boxed{4 \pm \sqrt2}", r"4+\sqrt{3}, 4-\sqrt{3}", False),
]

# --- points and tuples (order matters)
POINTS = [
    (r"\boxed{(1, -2)}", "(1,-2)", True),
    (r"The point is $(x, y) = (3, 4)$, so \boxed{(3,4)}", "(3, 4)", True),
    (r"\boxed{(1,\ -16,\ -4,\ 43)}", "(1,-16,-4,43)", True),
    (r"\boxed{(\frac{1}{2}, 3)}", "(0.5, 3)", True),
    (r"答案是 $(2, 5)$", "(2,5)", True),
    (r"\boxed{(-2, 1)}", "(1,-2)", False),
    (r"\boxed{(1, 2)}", "(1,-2)", False),
    (r"\boxed{(1, -16, 4, 43)}", "(1,-16,-4,43)", False),
]

# --- matrices and vectors written with \frac or /
MATRICES = [
    (r"\boxed{\begin{pmatrix} \frac{1}{5} \\ -\frac{18}{5} \end{pmatrix}}", r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}", True),
    (r"\boxed{\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", True),
    (r"\boxed{\begin{bmatrix} 0.5 \\ 2 \end{bmatrix}}", r"\begin{pmatrix} 1/2 \\ 2 \end{pmatrix}", True),
    (r"\boxed{\begin{pmatrix} 1/5 \\ 18/5 \end{pmatrix}}", r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}", False),
    (r"\boxed{\begin{pmatrix} 0 & -1 \\ -1 & 0 \end{pmatrix}}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", False),
    (r"所以所求向量为 $\boxed{\begin{pmatrix} \dfrac{2}{3} \\ -1 \end{pmatrix}}$。", r"\begin{pmatrix} 2/3 \\ -1 \end{pmatrix}", True),
    (r"所以所求向量为 $\boxed{\begin{pmatrix} \dfrac{3}{2} \\ -1 \end{pmatrix}}$。", r"\begin{pmatrix} 2/3 \\ -1 \end{pmatrix}", False),
]

# --- equations: the same line or plane written differently is the same answer
EQUATIONS = [
    (r"\boxed{2x + y = 0}", "y = -2x", True),
    (r"\boxed{y = -2x}", "y = -2x", True),
    (r"\boxed{4x - 2y + 6z - 8 = 0}", "2x - y + 3z = 4", True),
    (r"\boxed{y = \frac{1}{2}x + 3}", "y = 0.5x + 3", True),
    (r"答案是 $y = 2x + 1$", "y=2x+1", True),
    (r"\boxed{y = 2x}", "y = -2x", False),
    (r"\boxed{2x + y = 1}", "y = -2x", False),
    (r"\boxed{2x - y + 3z = 5}", "2x - y + 3z = 4", False),
    (r"\boxed{x = 5}", "5", True),
    (r"\boxed{x = 6}", "5", False),
    (r"\boxed{y - 3 = 2(x - 1)}", "y = 2x + 1", True),
    (r"\boxed{(x-1)^2 + (y+2)^2 = 9}", "x^2 - 2x + y^2 + 4y - 4 = 0", True),
    (r"\boxed{x + y + z = 1}", "x+y+z=2", False),
    (r"\boxed{y=x^2}", "y = x^2 + 1", False),
    ("$11a+c$", "7 = 11a+c", False),  # an equation is not its right side
    (r"\boxed{f(x) = x^2 + 1}", "x^2+1", True),
    (r"答案：$y=-\frac{1}{2}x+\frac{3}{4}$", "2x+4y-3=0", True),
]

# --- \text{...} words
TEXT_WORDS = [
    (r"\boxed{\text{even}}", r"\text{even}", True),
    (r"The function is \boxed{\text{odd}}.", r"\text{odd}", True),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
    (r"\boxed{\textbf{ellipse}}", r"\text{ellipse}", True),
    (r"\boxed{\text{neither}}", r"\text{odd}", False),
    (r"\boxed{\text{odd}}", r"\text{even}", False),
    (r"$1 - \frac{1}{\mathrm{e}}$", r"1 - \frac{1}{e}", True),  # \mathrm{e} is the constant, not a word
    (r"$1 + \frac{1}{\mathrm{e}}$", r"1 - \frac{1}{\mathrm{e}}", False),
    ("答案是小红", r"\text{小明}", False),
]

# --- multiple choice: the final anchored letter decides
CHOICES = [
    ("The answer is (B).", "(B)", True),
    (r"\boxed{\text{(D) } 12}", "D", True),
    (r"\boxed{\text{(D) } 12}", r"\text{(D)}", True),
    ("**Answer: C**", "C", True),
    ("A is wrong because the area is too small, and B overcounts. So the answer is C.", "C", True),
    ("故选 A", "A", True),
    ("选项 B 错误，选项 C 正确，故选：C", "(C)", True),
    ("答案为 B", r"\text{(B)}", True),
    ("Option D is correct.", "D", True),
    ("(B)", "B", True),
    (r"\boxed{E}", r"\text{(E)}", True),
    # look-alikes: an earlier mention, a different letter, the wrong value
    ("A is wrong because the area is too small, and B overcounts. So the answer is C.", "A", False),
    ("**Answer: C**", "B", False),
    ("故选 A", "B", False),
    ("选项 A 错误。答案为 D", "A", False),
    (r"\boxed{\text{(D) } 12}", "C", False),
    ("The answer is (B).", r"\text{(E)}", False),
    (r"The answer is $\boxed{\textbf{(C) }24}$", "C", True),
    (r"The answer is $\boxed{24}$", r"\textbf{(C) }24", True),  # the option's value, no letter given
    (r"The answer is $\boxed{25}$", r"\textbf{(C) }24", False),
    ("I think the answer is B, but let me check. Actually the answer is C.", "B", False),
    ("A选项错误，B选项错误，C选项正确，故选C", "A", False),
    ("正确答案是 B 选项", "B", True),
    # an output that opens with its marked choice, then explains
    ("A. Because B is not valid", "A", True),
    ("A. Because B is not valid", "B", False),
    ("(C) 12, since the sum is 12", r"\text{(C) } 12", True),
    ("B、因为甲的说法不对", "B", True),
    ("B、因为甲的说法不对", "A", False),
    ("A is wrong", "A", False),  # a bare letter in a sentence is no choice
]

# --- Chinese number words and forms, full-width digits and signs
CHINESE = [
    ("答案是十二", "12", True),
    ("答案是三分之二", r"\frac{2}{3}", True),
    ("答案：1.2万", "12000", True),
    ("答案是3又1/4", r"\frac{13}{4}", True),
    ("答案是百分之二十", "20%", True),
    ("答案是负三", "-3", True),
    ("答案是零点五", "0.5", True),
    ("答案是１２３", "123", True),
    ("答案是－７", "-7", True),
    ("一共有二十一个学生", "21", True),
    (r"\boxed{两千零五十}", "2050", True),
    ("答案是十二", "21", False),
    ("答案是三分之二", r"\frac{3}{2}", False),
    ("答案：1.2万", "1200", False),
    ("答案是3又1/4", r"\frac{3}{4}", False),
    ("答案是负三", "3", False),
    ("答案是１２３", "1234", False),
    ("【答案】B", "B", True),
    ("【解答】解：由题意得 3+4=7，故答案为：7", "7", True),
    ("一共需要 1.2 万元。", "12000", True),
    ("答案是三又四分之一", "13/4", True),
    ("答：他还剩二十个。", "20", True),
    ("答案：x=-1 或 x=6", "-1,6", True),
    ("因此，结果是 -7。", "-7", True),
    ("一共需要 1.2 万元。", "1.2", False),
    ("答案是三又四分之一", "3/4", False),
    ("答案：x=-1 或 x=6", "-1", False),
]

# --- units and symbols inside the answer
UNITS = [
    (r"\boxed{45^\circ}", "45", True),
    (r"\boxed{45°}", r"45^\circ", True),
    (r"\boxed{12\text{ cm}}", "12", True),
    (r"\boxed{12元}", "12", True),
    (r"\boxed{5.4 \text{ cents}}", r"5.4 \text{ cents}", True),
    ("The answer is 3.2 × 10⁻⁵.", r"3.2\times10^{-5}", True),
    (r"\boxed{3.2 \times 10^{-5}}", "0.000032", True),
    (r"\boxed{\frac{270}{7}\text{ degrees}}", r"\frac{270}7\text{ degrees}", True),
    (r"\boxed{\$18.90}", r"\$18.90", True),
    (r"\boxed{10,\!080}", "10080", True),
    ("答案是 12 厘米", "12", True),
    (r"\boxed{46^\circ}", "45", False),
    (r"\boxed{12\text{ cm}^2}", "13", False),
    ("The answer is 3.2 × 10⁻⁴.", r"3.2\times10^{-5}", False),
    (r"\boxed{13元}", "12", False),
    (r"\boxed{5\,\text{cm}^2}", "5", True),
    ("The angle is 45 degrees.", r"45^\circ", True),
    (r"\boxed{30^\circ}", r"\frac{\pi}{6}", False),  # degrees are not radians
    (r"\boxed{\frac{\pi}{6}}", r"30^\circ", False),
    ("1.5 × 10⁶", "1500000", True),
    ("x²+1", "x^2+1", True),
    ("答案是1.5万元", "15000", True),
    ("The answer is 3½ cups.", "3.5", True),
    ("答案是 2√3", r"2\sqrt{3}", True),
    ("The answer is x ≥ 2", r"[2,\infty)", True),
    ("x = 3 ± √2", r"3+\sqrt2, 3-\sqrt2", True),
    ("The answer is 2π", r"2\pi", True),
    ("The answer is 3½ cups.", "3.25", False),
    ("The answer is x ≤ 2", r"[2,\infty)", False),
]

# --- percent vs fraction vs decimal
PERCENT = [
    (r"\boxed{25\%}", "0.25", True),
    (r"\boxed{25\%}", r"\frac{1}{4}", True),
    ("The answer is 25%.", "25", True),
    ("答案是 25%", "25%", True),
    (r"\boxed{2.5\%}", "25", False),
    (r"\boxed{0.25\%}", "25%", False),
    ("The answer is 50%", r"\frac12", True),
    ("The answer is 5%", "0.5", False),
    ("答案是百分之五十", "0.5", True),
]

# --- text after the answer that is not the answer
AFTER_ANSWER = [
    ("3 + 4 = 7. The answer is 7.\n\nQuestion: Tom has 5 apples and eats 2. How many are left?\nAnswer: 3", "7", True),
    ("So she pays 12 dollars.\n\nQuestion: What is 6 * 7?", "12", True),
    ("The answer is 8.<|im_end|>\n<|im_start|>user\nNow solve 2+2. The answer is 4.", "8", True),
    ("#### 15<|endoftext|>Human: what is 3+3?\nAssistant: #### 6", "15", True),
    ("x = 9, so the answer is 9.\n\nHuman: and 10 + 1?\n\nAssistant: 11", "9", True),
    ("所以答案是 5。\n问题：小明有 3 个苹果，吃了 1 个，还剩几个？\n答案是 2", "5", True),
    ("3 + 4 = 7. The answer is 7.\n\nQuestion: Tom has 5 apples and eats 2. How many are left?\nAnswer: 3", "3", False),
    ("The answer is 8.<|im_end|>\n<|im_start|>user\nNow solve 2+2. The answer is 4.", "4", False),
    ("所以答案是 5。\n问题：小明有 3 个苹果，吃了 1 个，还剩几个？\n答案是 2", "2", False),
    ("The result is 42.</s><s>[INST] next [/INST] 7", "42", True),
    ("The answer is 42.\nQ: What is 3+4?\nA: The answer is 7.", "42", True),
    ("The answer is 42.\nQ: What is 3+4?\nA: The answer is 7.", "7", False),
    # the next few-shot turn on the same line, right after a finished sentence
    ("The answer is 5. Question: What is 2+2? The answer is 4.", "5", True),
    ("The answer is 5. Question: What is 2+2? The answer is 4.", "4", False),
    ("So the total is 12! Human: and 3+3? Assistant: 6", "12", True),
    ("答案是 5。问题：2+2 等于多少？答案是 4", "5", True),
    ("答案是 5。问题：2+2 等于多少？答案是 4", "4", False),
    # a chain that names the question's parts is not cut there
    ("Re-read the problem. Problem: 3 apples plus 4 apples. So 3 + 4 = 7. The answer is 7.", "7", True),
    ("The question: how many are left? 10 - 3 = 7. The answer is 7.", "7", True),
]

# --- no answer given: cut mid-chain, "cannot be determined"
NO_ANSWER = [
    ("First 5 + 7 = 12, and then 12 +", "12", False),
    ("We have 3 * 4 = 12, so", "12", False),
    ("Adding them up: 12 + 30 = 42. Therefore,", "42", False),
    (r"The total is \( 12 \times", "12", False),
    ("The remaining cost is:", "7", False),
    ("So x = 4 and the value is 8, therefore the answer cannot be determined.", "8", False),
    ("所以 3 + 5 = 8，因此", "8", False),
    ("由 x = 2 得到的结果无法确定", "2", False),
    ("Total MST weight: 5 + 3 + 5 = 13.", "13", True),  # a finished sentence is an answer
    ("所以一共 8 个。", "8", True),
    (r"We get \(x = \frac{1}{2}", "1/2", False),
    ("Let me compute: 12 + 30 = 42. So the total is", "42", False),
    ("There is not enough information to determine x; if x = 3 then 3.", "3", False),
    ("Maybe the answer is 5, which is\n\nLet me add the rest: 5 + 7 + 3 = 15, and 15 +", "5", False),  # tentative
    ("答案是 8？再算一次：3 + 5 =", "8", False),
    (r"The value is $\frac{1}{2}", "1/2", False),  # a formula left open
    ("With only two equations the value cannot be determined.", r"\text{cannot be determined}", True),
    ("She pays $18 for the books.", "18", True),  # a currency sign is no open formula
]

# --- several boxes that together are one answer ("\boxed{2} and \boxed{5}", "y_1 = \boxed{..}, y_2 = \boxed{..}")
SEVERAL_BOXES = [
    (r"The roots are \[ \boxed{5} \quad \text{and} \quad \boxed{-3}. \]", "-3, 5", True),
    (r"So \(\boxed{2}\) and \(\boxed{7}\).", r"x = 7 \text{ or } x = 2", True),
    (r"\boxed{(1, 4)} \text{ for part (a) and } \boxed{(2, 9)}", "(1, 4), (2, 9)", True),
    (r"\(a = \boxed{3}\) and \(b = \boxed{8}\)", "a = 3, b = 8", True),
    (r"It takes \boxed{4} trucks and \boxed{6} vans.", r"\boxed{4} trucks, \boxed{6} vans", True),
    (r"所以 \boxed{3} 和 \boxed{-1}", "-1, 3", True),
    (r"\boxed{x = 2} \quad \text{and} \quad \boxed{y = 5}", "x = 2, y = 5", True),
    # look-alikes: a box, then a correction or a check, is one answer (the last)
    (r"The roots are \boxed{5} and \boxed{-4}.", "-3, 5", False),
    (r"\boxed{3} is wrong, so \boxed{5}", "5", True),
    (r"\boxed{3} is wrong, so \boxed{5}", "3, 5", False),
    (r"First \boxed{12}, then after checking, \boxed{18}", "18", True),
    (r"先得 \boxed{12}，检查后改为 \boxed{18}", "18", True),
    (r"\boxed{a = 3} \quad \text{and} \quad \boxed{b = 9}", "a = 3, b = 8", False),
]

# --- a later "The final answer is ..." after a box earlier in the chain; a final structured formula
LATER_ANSWER = [
    (r"Interest: $\boxed{255}$. Total: 10,200 + 255 = 10,455. Final Answer: The final answer is $10,455$.",
     "10455", True),
    (r"Interest: $\boxed{255}$. Total: 10,200 + 255 = 10,455. Final Answer: The final answer is $10,455$.",
     "255", False),
    (r"第一步 \boxed{12}。再加 6 得 18。答案是 18。", "18", True),
    (r"So the sum is \boxed{42}. The answer is correct.", "42", True),  # no number after the phrase: the box
    ("Substituting back, y = 8.8 - 2.8 = 6. " * 30 + r"So the ordered pair that solves it is $(7, 6)$.", "(7, 6)",
     True),
    ("Substituting back, y = 8.8 - 2.8 = 6. " * 30 + r"So the ordered pair that solves it is $(7, 6)$.", "6",
     False),
    ("代入得 y = 6。" * 30 + r"所以有序数对是 $(7, 6)$。", "(7, 6)", True),
]

# --- equals signs inside braces are no equation; named values; roots x_1, x_2 as a list
NAMED_VALUES = [
    (r"$S_n = \sum_{k=1}^{n} k^2$", r"S_n = \sum_{k=1}^{n} k^2", True),
    (r"$S_n = \sum_{k=1}^{n} k^3$", r"S_n = \sum_{k=1}^{n} k^2", False),
    (r"$\prod_{i=1}^{4} i$", "24", True),
    (r"\boxed{x_2 = -1, \quad x_1 = 3}", r"x_1 = 3, x_2 = -1", True),
    (r"\boxed{a_{10} = 7, a_2 = 1}", r"a_2 = 1, a_{10} = 7", True),
    (r"\boxed{x_1 = 3, x_2 = 1}", r"x_1 = 3, x_2 = -1", False),
    (r"\boxed{x = -5, p = \frac{14}{3}}", r"-5, \frac{14}{3}", True),
    (r"\boxed{x = 1, y = 2}", "(1, 2)", True),
    (r"\boxed{x = 2, y = 1}", "(1, 2)", False),
]

# --- numbers math-verify would round together; sequences; roots written with parentheses
CLOSE_NUMBERS = [
    (r"$\frac{1}{2^{20}}$", r"\frac{1}{2^{21}}", False),
    (r"$\frac{1}{10!}$", r"\frac{1}{11!}", False),
    (r"$\frac{1}{3 \cdot 2^{40}}$", r"\frac{2^{39}+1}{3 \cdot 2^{40}}", False),
    (r"$\frac{1}{2^{20}}$", r"2^{-20}", True),
    ("0.0000012", "0.0000013", False),
    (r"$\frac{1}{1000000}$", "0.000001", True),
    (r"$1, 4, 9, \ldots, n^2$", r"1, 2, 3, \ldots, n", False),
    (r"$1, 2, \dots, n$", r"1, 2, \ldots, n", True),
    (r"$2:4:6:\cdots$", r"1:2:3:\ldots", False),
    (r"$4\sqrt(2)$", "4", False),
    (r"$4\sqrt(2)$", r"4\sqrt{2}", True),
    (r"答案是 $3\sqrt(5)$", r"3\sqrt{5}", True),
]

# --- a reference that is a whole written solution; a decimal comma in prose; two-letter names (AB = 4)
WRITTEN_FORMS = [
    (r"A loss of $\boxed{28\%}$.",
     "The stock keeps 90% then 80% of its value. Final Answer: The final answer is $28\%$. I hope it is correct. "
     "Note: another approach is as follows:", True),
    (r"A loss of $\boxed{72\%}$.",
     "The stock keeps 90% then 80% of its value. Final Answer: The final answer is $28\%$. I hope it is correct. "
     "Note: another approach is as follows:", False),
    ("所以答案是 $\\boxed{15}$。", "先求出每人 5 个，三人共 15 个。最终答案是 15。下面给出另一种解法：设每人 x 个，则", True),
    ("Il reste 2,74 $ au total.", "2.74", True),
    ("Il reste 2,74 $ au total.", "74", False),
    ("Es bleiben 3,5 kg übrig.", "3.5", True),
    ("The two numbers are 12, 74", "74", True),  # a comma and a space: a list, its last number
    (r"\boxed{AB = 4, CD = 5}", "4, 5", True),
    (r"\boxed{AB = 4, CD = 6}", "4, 5", False),    # a polynomial written with spaces is no number followed by a unit letter
    (r"\boxed{-2 x^{2} + 4 x + 3}", "-2x^2+4x+3", True),
    (r"\boxed{-2 x^{2} + 4 x + 3}", "-2", False),
    (r"所以 \boxed{3 x - 2}", "3x-2", True),
    (r"所以 \boxed{3 x - 2}", "3", False),
    (r"\boxed{12 \text{ m}^2}", "12", True),
    # an output that is only a matrix (no $, no box) is that matrix
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", True),
    (r"\begin{pmatrix}1&2\\3&5\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", False),
    (r"\begin{bmatrix}\frac{1}{2}\\-3\end{bmatrix}", r"\begin{pmatrix}1/2\\-3\end{pmatrix}", True),
    (r"\begin{bmatrix}\frac{1}{2}\\-3\end{bmatrix}", "-3", False),
]

FAMILIES = {"shorthand": SHORTHAND, "leading_dot": LEADING_DOT, "sign": SIGN, "intervals": INTERVALS,
            "lists": LISTS, "forms": FORMS, "number_forms": NUMBER_FORMS, "plus_minus": PLUS_MINUS, "points": POINTS, "matrices": MATRICES,
            "equations": EQUATIONS, "text_words": TEXT_WORDS, "choices": CHOICES, "chinese": CHINESE,
            "units": UNITS, "percent": PERCENT, "after_answer": AFTER_ANSWER, "no_answer": NO_ANSWER,
            "several_boxes": SEVERAL_BOXES, "later_answer": LATER_ANSWER, "named_values": NAMED_VALUES,
            "close_numbers": CLOSE_NUMBERS, "written_forms": WRITTEN_FORMS}
ROWS = [pytest.param(o, r, e, id=f"{fam}-{i}") for fam, rows in FAMILIES.items() for i, (o, r, e) in enumerate(rows)]


@pytest.mark.parametrize("output,reference,expected", ROWS)
def test_grader_by_kind(output, reference, expected):
    assert is_correct(output, reference) is expected


RULES = [
    # (output, reference, finish_reason, correct, rule)
    ("#### 18", "18", None, True, "fast path: string"),
    ("The answer is 18.00", "18", None, True, "fast path: number"),
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", None, True, "math-verify"),
    ("So the answer is C.", "(C)", None, True, "choice letter"),
    ("First 5 + 7 = 12, and then 12 +", "12", None, False, "no answer: truncated"),
    ("The answer is 18.", "18", "length", False, "no answer: token limit"),
    ("It cannot be determined from 3 and 4.", "4", None, False, "no answer: cannot be determined"),
    ("", "4", None, False, "no answer: empty"),
    ("The answer is 18.", "18", "stop", True, "fast path: string"),
]


@pytest.mark.parametrize("output,reference,finish_reason,correct,rule", RULES)
def test_grade_says_which_rule_decided(output, reference, finish_reason, correct, rule):
    g = grade(output, reference, finish_reason=finish_reason)
    assert (g.correct, g.rule) == (correct, rule)


def test_grade_result_is_frozen_and_carries_the_answer():
    g = grade(r"So $\boxed{\frac34}$.", "0.75")
    assert (g.answer, g.correct) == (r"\frac{3}{4}", True)
    with pytest.raises(AttributeError):
        g.correct = False


EXTRACTED = [
    ("so the least value is -7.", "-7"),
    (r"$\frac13$", r"\frac{1}{3}"),
    (r"The answer is $\frac13$.", r"\frac{1}{3}"),
    ("The answer is 8.<|im_end|>\n<|im_start|>user\nThe answer is 4.", "8"),
    ("First 5 + 7 = 12, and then 12 +", None),
    ("故选 B", "B"),
    ("答案是三分之二", "2/3"),
    ("The answer is 3.2 × 10⁻⁵.", r"3.2 \times 10^{-5}"),
]


@pytest.mark.parametrize("text,expected", EXTRACTED)
def test_extract_answer_by_kind(text, expected):
    assert extract_answer(text) == expected


PATHOLOGICAL = [
    "7" * 50_000,
    r"\boxed{" + "{" * 5_000 + "1" + "}" * 5_001,
    "{" * 20_000 + "5" + "}" * 20_000,
    r"\boxed{" + r"\frac{" * 60 + "1" + "}{2}" * 60 + "}",
]


@pytest.mark.parametrize("output", PATHOLOGICAL, ids=["digits", "boxed-braces", "braces", "nested-frac"])
def test_pathological_output_is_no_answer_within_the_timeout(output):
    t0 = time.monotonic()
    g = grade(output, "7")
    assert time.monotonic() - t0 < 5
    assert (g.answer, g.correct) == (None, False)
    assert g.rule.startswith("no answer")


def test_eval_writes_the_rule_and_counts_verdicts_per_rule():
    from mathdistill.evaluate import grade_rule_counts, score_outputs
    from mathdistill.records import Problem

    probs = [Problem(id=f"p{i}", question="q", answer=a) for i, a in enumerate(["18", "(C)", "12", "7"])]
    outs = [{"output": "#### 18", "tokens": 3, "finish_reason": "stop"},
            {"output": "So the answer is B.", "tokens": 5, "finish_reason": "stop"},
            {"output": "First 5 + 7 = 12, and then 12 +", "tokens": 9, "finish_reason": "stop"},
            {"output": "The answer is 7.", "tokens": 4, "finish_reason": "length"}]
    preds = score_outputs(probs, outs)
    assert [(p.correct, p.grade_rule) for p in preds] == [
        (True, "fast path: string"), (False, "choice letter"), (False, "no answer: truncated"),
        (False, "no answer: token limit")]
    assert preds[0].model_dump()["grade_rule"] == "fast path: string"  # a predictions.jsonl field
    assert grade_rule_counts(preds) == {"fast path: string": {"correct": 1, "wrong": 0},
                                        "choice letter": {"correct": 0, "wrong": 1},
                                        "no answer: truncated": {"correct": 0, "wrong": 1},
                                        "no answer: token limit": {"correct": 0, "wrong": 1}}


def test_a_grader_change_is_a_code_change_the_stage_cache_sees(tmp_path):
    """answers/ is a package: the stage key covers every module in it, not only its __init__.py."""
    import shutil

    from mathdistill.stages import package_dir, stage_code

    root = tmp_path / "mathdistill"  # a copy of the package to edit
    shutil.copytree(package_dir(), root, ignore=shutil.ignore_patterns("__pycache__"))
    before = stage_code("eval", root)
    assert "answers.verdict" in before["modules"]
    verdict = root / "answers" / "verdict.py"
    verdict.write_text(verdict.read_text(encoding="utf-8") + "\n# a grader change\n", encoding="utf-8")
    assert stage_code("eval", root)["source_sha256"] != before["source_sha256"]
