"""An OpenAI-compatible chat-completions client for teachers, judges and endpoint evals.

One place for the endpoint machinery that ``generate`` (teacher traces), ``eval --backend openai`` and the
CQS judge share: bounded concurrency, requests- and tokens-per-minute limits, retries with backoff and
jitter, and the SQLite cache of every finished call (:mod:`mathdistill.cache`), so no finished call is paid
twice.

Public API (other modules call only this)::

    ChatRequest(messages, key=..., sample=0)          # one call; ``key`` names it in results (e.g. problem id)
    ChatClientConfig(base_url=..., model=..., ...)     # endpoint + sampling + limits
    results = run_requests(cfg, requests, cache_path=None, desc="generate")   # list[ChatResult], request order

Behaviour, in order of a call's life:

- A request whose cache key (:func:`mathdistill.cache.call_key`: model, messages, sampling parameters,
  sample index) is in the cache is answered from it, without a call. Identical requests are sent once.
- Samples of one prompt go out as one call with ``n=k`` (``n_mode="auto"``, the default), falling back for
  good to one call per sample when the endpoint rejects ``n`` (a 400 about ``n``) or answers fewer choices.
- Each try waits for a concurrency slot, the RPM/TPM buckets and any ``Retry-After`` pause, then runs under
  ``timeout_s``. 429, 408, 409, 5xx, timeouts, connection errors, unparsable bodies and 200s that are not an
  answer (``finish_reason`` abort/error, no choices) are retried with exponential backoff and jitter
  (``Retry-After`` wins when the server sends one); other 4xx are not.
- A 400 asking for ``max_completion_tokens`` switches the run to that field and resends the call.
- A finished call is committed to the cache before it counts as done; a call that fails for good gets
  ``ChatResult.error``/``reason`` and a row in the cache's ``failures`` table, and the run goes on.
  Only a setup the user must fix stops the run (:class:`UserError`): a refused key (HTTP 401), an account
  out of quota or credit (429 ``insufficient_quota``, 402), prompt + ``max_tokens`` over the model's
  context, or no connection / HTTP 403/404 before any call succeeded.

The transport is one ``httpx.AsyncClient`` (proxies from the environment, decompression, TLS); the API key
is read from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY`` only, sent only in the Authorization header, and
never written anywhere: request/response bodies are stored without headers, and any text that would be
written (bodies, error details) has the key replaced by ``***``.

Modules: ``config`` (config, request/result/stats types), ``messages`` (reading answers, URLs), ``limits``
(buckets, Retry-After), ``errors`` (what a failed try means), ``engine`` (workers, retries, the cache
writes), ``run`` (planning against the cache, :func:`run_requests`).
"""

from .config import KEY_VARS, ChatClientConfig, ChatRequest, ChatResult, RunStats, api_key
from .engine import Job
from .errors import Context, Fail, classify
from .limits import Bucket, retry_after_s
from .messages import endpoint_url, not_an_answer, parse_message, public_endpoint, split_think
from .run import Plan, plan_requests, request_keys, run_requests

__all__ = ["KEY_VARS", "Bucket", "ChatClientConfig", "ChatRequest", "ChatResult", "Context", "Fail", "Job", "Plan",
           "RunStats", "api_key", "classify", "endpoint_url", "not_an_answer", "parse_message", "plan_requests",
           "public_endpoint", "request_keys", "retry_after_s", "run_requests", "split_think"]
