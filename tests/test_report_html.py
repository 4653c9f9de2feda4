"""report.md + self-contained report.html for eval and run folders; report.html rendered in headless Chromium."""

import html
import json
import random
import re
import shutil
import subprocess

import pytest

from conftest import write_jsonl
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, evaluate
from mathdistill.report import report, worst_failures

PROBS = [{"id": f"q{i}", "question": f"Tom has {i} apples and buys 2 more. How many?", "answer": str(i + 2),
          "source": "gsm" if i % 2 else "sum"} for i in range(24)]


def make_run(root, with_train=True):
    """A run folder as `mathdistill run` lays it out: eval/base, eval/student, scores.json, train log."""
    pf = write_jsonl(root / "problems" / "eval.jsonl", PROBS)
    rng = random.Random(0)
    for name, acc in (("base", 0.3), ("student", 0.7)):
        preds = [{"problem_id": p["id"], "tokens": rng.randint(20, 200),
                  "output": f"{i} + 2 = {i + 2}\n#### {i + 2}" if rng.random() < acc else
                  f"{i} + 2 = {i + 3}\n#### {i + 3} <script>alert(1)</script> | ```"} for i, p in enumerate(PROBS)]
        pp = write_jsonl(root / f"{name}.jsonl", preds)
        evaluate(EvalConfig(model_bytes=98_000_000, max_new_tokens=256), pf, root / "eval" / name, model=None,
                 predictions=pp, label=name)
    per = {m: json.loads((root / "eval" / m / "scores.json").read_text()) for m in ("base", "student")}
    keep = ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "model_bytes", "n", "cqs_kind", "by_family", "meta")
    (root / "scores.json").write_text(json.dumps({m: {k: s[k] for k in keep} for m, s in per.items()} | {"config": {}}))
    if with_train:
        write_jsonl(root / "train" / "train_log.jsonl", [{"step": i, "loss": 2.0 / (i + 1)} for i in range(1, 9)])
    return root


CHECK = """<script>
window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const res = {
    tables: [...document.querySelectorAll('table')].map(t => ({
      head: [...t.querySelectorAll('thead th')].map(x => x.textContent.trim()),
      rows: [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(x => x.textContent.trim())),
      box: box(t)})),
    images: [...document.images].map(i => ({decoded: i.complete && i.naturalWidth > 0, natural: [i.naturalWidth, i.naturalHeight],
                                           box: box(i), alt: i.alt, inline: i.src.startsWith('data:image/png;base64,')})),
    scripts: document.scripts.length,
    external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
               .filter(u => !u.startsWith('data:') && !u.startsWith('#')),
    pre: [...document.querySelectorAll('pre')].length,
  };
  const out = document.createElement('pre'); out.id = 'render-check'; out.textContent = JSON.stringify(res);
  document.body.appendChild(out);
});
</script>"""


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium); report.html not rendered")
    return exe


def render(path, tmp_path):
    """Load the page in headless Chromium; return what the page itself measured after layout."""
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome-profile'}",
           "--window-size=1200,2000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="render-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"Chromium did not render the page (exit {r.returncode}): {r.stderr[-800:]}"
    return json.loads(html.unescape(m.group(1)))


def test_report_html_renders_table_and_plots_in_chromium(tmp_path):
    run = make_run(tmp_path / "run")
    report(run)
    page = run / "report.html"
    seen = render(page, tmp_path)
    # the score table: one row per model, every score with its interval
    scores = next(t for t in seen["tables"] if "Overall" in t["head"] and "misses" in t["head"])
    assert scores["head"][:7] == ["model", "AS", "CQS (proxy)", "ES", "MLS", "Overall", "tokens/problem"]
    assert [r[0] for r in scores["rows"]] == ["base", "student"]
    for row in scores["rows"]:
        for cell in (row[1], row[2], row[3], row[5]):
            assert re.fullmatch(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", cell), cell
    assert scores["box"][0] > 300 and scores["box"][1] > 40
    # the plots: inline PNGs that decode and take up space on the page
    alts = [i["alt"] for i in seen["images"]]
    assert any("Overall against mean tokens" in a for a in alts) and any("tokens per problem" in a for a in alts)
    assert len(seen["images"]) == 4  # scores, trade-off, token histogram, training loss
    for img in seen["images"]:
        assert img["inline"] and img["decoded"] and img["natural"][0] > 400 and img["box"][0] > 300 and img["box"][1] > 150, img
    assert seen["external"] == [] and seen["scripts"] == 1  # only the probe: the report runs no script of its own
    assert seen["pre"] >= 10  # failures are shown with their outputs


def test_report_html_is_self_contained_and_escapes_model_output(tmp_path):
    run = make_run(tmp_path / "run", with_train=False)
    report(run)
    text = (run / "report.html").read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 3


def test_run_report_md(tmp_path):
    run = make_run(tmp_path / "run")
    md = report(run).read_text()
    assert md.startswith("# mathdistill run report")
    # the paired difference student - base with its interval, stated in the report itself (one bootstrap)
    m = re.search(r"\*\*The student (beats|is not distinguishable from|is worse than) the base model: Overall ([\d.]+) vs ([\d.]+), "
                  r"student - base ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]; AS ([+-][\d.]+) \[", md)
    assert m, md[:600]
    verdict, student, base, d, lo, hi = m.group(1), *map(float, m.groups()[1:6])
    assert d == pytest.approx(student - base, abs=0.11) and lo < hi
    assert verdict == ("beats" if lo > 0 else "is worse than" if hi < 0 else "is not distinguishable from")
    assert "mathdistill eval --compare" not in md
    assert "CQS here is the **proxy**" in md and "95% interval" in md
    for f in ("scores.png", "tradeoff.png", "tokens.png", "loss.png"):
        assert (run / f).is_file() and f"]({f})" in md
    assert len(re.findall(r"^## Worst \d+ failures: (base|student)$", md, re.M)) == 2
    assert "| base | 0 | 0 | 0 | 0 | 0 | 0 |" in md  # misses by reason: none; every wrong answer is a wrong number


def test_run_report_skips_the_stage_cache(tmp_path):
    """A run folder's stage cache holds copies of eval/base and eval/student: they are not extra models."""
    run = make_run(tmp_path / "run", with_train=False)
    for m in ("base", "student"):
        shutil.copytree(run / "eval" / m, run / "cache" / "eval" / f"0123abcd{m}")
    md = report(run).read_text()
    assert "cache/" not in md
    assert len(re.findall(r"^\| (base|student) \|", md, re.M)) >= 2
    assert not re.search(r"^\| (?!base|student|model|---)[^|]*\| \d", md, re.M)  # no third model in any table


def test_eval_folder_report_and_worst_failures(tmp_path):
    run = make_run(tmp_path / "run", with_train=False)
    ev = run / "eval" / "student"
    md = (ev / "report.md").read_text()  # eval writes its own report
    assert md.startswith("# mathdistill eval report") and "| student |" in md and "| base |" not in md
    preds = [json.loads(x) for x in (ev / "predictions.jsonl").read_text().splitlines()]
    worst = worst_failures(preds)
    assert all(not p["correct"] for p in worst) and len(worst) == min(10, sum(not p["correct"] for p in preds))
    keys = [(p["cqs"]["cqs"], -p["tokens"]) for p in worst]
    assert keys == sorted(keys)
    assert f"### 1. {worst[0]['problem_id']} " in md


def test_report_of_a_folder_of_evals_and_of_nothing(tmp_path):
    run = make_run(tmp_path / "run", with_train=False)
    (run / "scores.json").unlink()
    md = report(run).read_text()  # no run scores.json: the eval folders below are found
    assert "| base |" in md and "| student |" in md
    with pytest.raises(UserError, match="no scores.json"):
        report(tmp_path / "run" / "problems")
