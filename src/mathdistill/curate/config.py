"""The curation recipe: :class:`CurateConfig` and the options of each step under its own key."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..config import StageConfig
from ..records import REASONING_TAGS, FieldMap

SEED_STEPS = ["strip_think", "drop_empty"]
STEP_NAMES = ("strip_think", "drop_empty", "drop_truncated", "majority_vote", "verify_answer", "arith_check", "select",
              "length_filter", "decontaminate", "dedup")  # curate.steps.STEPS holds their functions


class TraceFields(StageConfig):
    """Where a traces file keeps each field; a dotted name reaches inside (``response.body.content``)."""

    problem_id_field: str = Field("problem_id", description="field with the problem id the trace answers")
    content_field: str = Field("content", description="field with the teacher's visible answer; a * part makes "
                               "every item a sample (response.body.choices.*.message.content: all n choices)")
    reasoning_field: str = Field("reasoning", description="field with the teacher's separate reasoning, if any")
    finish_reason_field: str = Field("finish_reason", description="field with the stop reason (length = truncated); "
                                     "when the record has no such field, the nearest finish_reason beside "
                                     "content_field is read (the same choice's, in an OpenAI Batch output)")
    sample_field: str = Field("sample", description="field with the sample index (numbered in file order when absent)")
    question_field: str = Field("question", description="a trace that carries its own question: used when its "
                                                        "problem id is not in the problems files (or none are given)")
    answer_field: str = Field("answer", description="reference answer carried by such a trace")


class VerifyAnswerConfig(StageConfig):
    """verify_answer: rejection sampling against the reference (or the majority vote's label)."""

    no_reference: Literal["keep", "drop"] = Field("keep", description="rows whose problem has neither a reference "
                                                                      "nor a vote label: keep or drop")
    use_math_verify: bool = Field(True, description="compare non-numeric answers with math-verify (else exact only)")
    timeout_s: int = Field(5, ge=1, description="math-verify timeout per comparison, seconds")


class MajorityVoteConfig(StageConfig):
    """majority_vote: label problems without a reference by the answer most of their samples agree on."""

    min_samples: int = Field(2, ge=1, description="problems with fewer samples are not labelled (their rows are dropped)")
    min_agreement: float = Field(0.5, ge=0, le=1, description="share of samples that must give the majority answer "
                                                             "(a tie for first place never labels)")
    keep: Literal["agreeing", "all"] = Field("agreeing", description="rows kept for a labelled problem: those that "
                                                                     "agree with the label, or all")


class SelectConfig(StageConfig):
    """select: which rows of each problem become training rows."""

    mode: Literal["shortest", "all"] = Field("shortest", description="shortest: the k shortest rows; all: the first k rows")
    k: int = Field(1, ge=1, description="rows kept per problem")
    by: Literal["chars", "tokens"] = Field("chars", description="length measure for shortest (tokens: the student tokenizer)")


class LengthFilterConfig(StageConfig):
    """length_filter: output length in student-tokenizer tokens (the ES score counts these)."""

    min_tokens: int = Field(1, ge=0, description="drop outputs shorter than this many tokens")
    max_tokens: int = Field(1024, ge=1, description="drop outputs longer than this many tokens")


class DedupConfig(StageConfig):
    """dedup: MinHash LSH near-duplicate removal across the whole dataset (the first row of a group is kept)."""

    key: Literal["question", "output", "question+output"] = Field("question+output", description="text compared")
    threshold: float = Field(0.85, gt=0, le=1, description="estimated Jaccard similarity at or above which rows are duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: finer estimates, slower)")
    shingle: int = Field(5, ge=1, description="words per shingle (a CJK character counts as a word)")
    seed: int = Field(1, description="MinHash seed")


class DecontaminateConfig(StageConfig):
    """decontaminate: drop rows whose question shares a long n-gram with any eval question."""

    ngram: int = Field(13, ge=1, description="n-gram length in words (a CJK character counts as a word); shorter "
                                             "questions are compared whole")
    eval_problems: list[str] = Field(default_factory=list, description="eval problem files (--eval-problems adds to these)")
    check_output: bool = Field(False, description="also drop rows whose output shares an n-gram with an eval question")


class ArithCheckConfig(StageConfig):
    """arith_check: chains whose ``a op b = c`` steps (arith.find_steps, exact) do not all hold."""

    action: Literal["drop", "keep", "repair"] = Field(
        "drop", description="drop such rows; keep them and count them; or repair: write the exact result in place of "
        "each wrong one (and, where the chain reused the wrong number, recompute it from there); a row is kept only "
        "when every step then holds and its final answer is unchanged, or changed to one equal to the reference "
        "(or the vote's label); other rows are dropped and counted")
    max_fixes: int = Field(20, ge=1, description="repair: most wrong results fixed in one chain (more: dropped)")


FormatName = Literal["alpaca_json", "alpaca_jsonl", "sharegpt", "messages", "parquet"]


class CurateConfig(StageConfig):
    """The curation recipe: which steps run, in order, each with its options under its own name."""

    steps: list[str] = Field(default_factory=lambda: list(SEED_STEPS),
                             description="curate steps in order; known: strip_think, drop_empty, drop_truncated, "
                                         "majority_vote, verify_answer, arith_check, select, length_filter, "
                                         "decontaminate, dedup")
    keep_think: bool = Field(False, description="keep the teacher's reasoning as <think>...</think> before the answer "
                             "(the student's format, whatever tags the teacher used)")
    reasoning_tags: list[tuple[str, str]] = Field(default_factory=lambda: list(REASONING_TAGS),
                                                  description="(open, close) tag pairs around a teacher's reasoning "
                                                  "that strip_think splits off: <think>, SkyThought's "
                                                  "<|begin_of_thought|>, <reasoning>; add your model's pair")
    question_template: str | None = Field(None, description="build each question from several fields of a problems "
                                          "row (or of a trace carrying its question), e.g. "
                                          "\"{question}\\n\\nOptions:\\n{options}\" (lists become A. ..., B. ... "
                                          "lines); unset: problem_fields.question_field alone")
    dataset_name: str = Field("mathdistill", description="dataset name in dataset_info.json (LLaMA-Factory)")
    formats: list[FormatName] = Field(default_factory=lambda: ["alpaca_json"],
                                      description="training files to write: alpaca_json (dataset.json), alpaca_jsonl, "
                                                  "sharegpt, messages (chat JSONL), parquet")
    tokenizer: str = Field("smollm2-135m", description="student tokenizer (a model spec) for length_filter, select by "
                                                       "tokens and the report's token histograms; loaded only when a step needs it")
    plot: bool = Field(True, description="write curate_report.png")
    problem_fields: FieldMap = Field(default_factory=FieldMap, description="field names in the problems files")
    trace_fields: TraceFields = Field(default_factory=TraceFields, description="field names in the traces file")
    verify_answer: VerifyAnswerConfig = Field(default_factory=VerifyAnswerConfig, description="verify_answer options")
    majority_vote: MajorityVoteConfig = Field(default_factory=MajorityVoteConfig, description="majority_vote options")
    arith_check: ArithCheckConfig = Field(default_factory=ArithCheckConfig, description="arith_check options")
    select: SelectConfig = Field(default_factory=SelectConfig, description="select options")
    length_filter: LengthFilterConfig = Field(default_factory=LengthFilterConfig, description="length_filter options")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig, description="decontaminate options")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="dedup options")

    @field_validator("steps")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STEP_NAMES]
        if unknown:
            raise ValueError(f"unknown curate step(s) {unknown}; known: {sorted(STEP_NAMES)}")
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice:
            raise ValueError(f"curate step(s) listed twice: {twice}")
        return v

    @field_validator("reasoning_tags")
    @classmethod
    def _tags(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        bad = [t for t in v if not (t[0].strip() and t[1].strip()) or t[0] == t[1]]
        if bad:
            raise ValueError(f"each reasoning tag pair needs two different, non-empty tags: {bad}")
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one format is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"a format is listed twice: {v}")
        return v
