"""Stage ``curate``: teacher traces -> training rows, through named steps that each count what they removed.

Steps (each optional; ``steps`` lists the ones that run, in order; each has its options under its own key):
  strip_think     split the reasoning off the outputs (``<think>``, SkyThought's ``<|begin_of_thought|>``, ``<reasoning>``,
                  or ``reasoning_tags``; also an unclosed leading open tag, a lone close tag)
  drop_empty      drop rows whose output is empty after that
  drop_truncated  drop rows the teacher stopped for length (``finish_reason: length``)
  majority_vote   problems without a reference: label them with the answer most samples agree on
  verify_answer   keep rows whose final answer equals the reference (or the vote's label): rejection sampling
  arith_check     rows whose ``a op b = c`` steps do not hold: drop them, keep and count them, or repair them
  select          per problem: the k shortest rows, or the first k
  length_filter   keep outputs whose length in student-tokenizer tokens is within [min_tokens, max_tokens]
  decontaminate   drop rows whose question shares an n-gram (13 words) with an eval question
  dedup           near-duplicate rows (MinHash LSH, datasketch) across the whole dataset: keep the first

The default recipe (``CurateConfig()``) is the seed's notebook: ``strip_think, drop_empty``. Rows become Alpaca
rows (``instruction`` = the English or Chinese system prompt by the question's language, ``input`` = question,
``output`` = cleaned answer) in the formats asked for, with ``dataset_info.json`` for LLaMA-Factory, and a
report (``curate_report.json``, ``.md``, ``.png``). Same inputs and config, same output bytes.

Modules: ``config`` (the recipe), ``join`` (traces matched to problems), ``rows`` (what steps pass along),
``steps`` (the steps and their registry), ``dedup`` (n-grams, decontaminate, the MinHash LSH index),
``report`` (summaries, figure, markdown), ``stage`` (``curate()``).
"""

from .config import (SEED_STEPS, ArithCheckConfig, CurateConfig, DecontaminateConfig, DedupConfig, LengthFilterConfig,
                     MajorityVoteConfig, SelectConfig, TraceFields, VerifyAnswerConfig)
from .dedup import lsh_bands, ngrams, shingle_hashes, words
from .rows import Ctx, Row
from .stage import curate
from .steps import STEPS

__all__ = ["CurateConfig", "curate", "STEPS", "SEED_STEPS", "words", "ngrams", "Row", "Ctx", "shingle_hashes", "lsh_bands",
           "TraceFields", "VerifyAnswerConfig", "MajorityVoteConfig", "SelectConfig", "LengthFilterConfig", "DedupConfig",
           "DecontaminateConfig", "ArithCheckConfig"]
