"""``ServeConfig``: where the service listens, how it batches, and the limits it enforces."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import StageConfig

KEY_VAR = "MATHDISTILL_SERVE_KEY"  # the bearer key, when --api-key is not given


class ServeConfig(StageConfig):
    """Where the service listens, how it batches, and the limits it enforces."""

    host: str = Field("127.0.0.1", description="address to bind (loopback only unless you say otherwise)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    engine: Literal["transformers", "vllm", "llamacpp"] = Field(
        "transformers", description="serving engine: built-in batcher on transformers, vLLM's OpenAI server (GPU), or "
        "llama.cpp on the model's GGUF (a .gguf, an export, or a model folder/run written once as f16 GGUF; "
        "needs mathdistill[llamacpp])")
    served_model_name: str | None = Field(None, description="model id clients see in /v1/models (None: from --model)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype (engines transformers and "
                                                             "vllm; llama.cpp runs the GGUF's own types)")
    threads: int | None = Field(None, ge=1, description="torch threads, or llama.cpp threads with engine llamacpp (None: "
                                "all cores for torch; the cores not already busy, by the load average, for llama.cpp)")
    max_batch_size: int = Field(32, ge=1, description="most rows (requests x n) in one forward pass; 1 turns batching off "
                                "(llamacpp: sequence slots, each with its own KV cache of max_prompt_tokens + "
                                "max_tokens_cap cells at most, allocated at start)")
    batch_wait_ms: float = Field(10.0, ge=0, description="when idle, how long the first request waits for others to batch with, ms")
    max_queue: int = Field(128, ge=0, description="most requests waiting for a batch slot; beyond it: 503 + Retry-After")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with a 503")
    max_n: int = Field(8, ge=1, description="most choices per request (n, times the prompts of a /v1/completions list)")
    default_max_tokens: int = Field(512, ge=1, description="completion tokens when a request names no max_tokens (clipped to the context)")
    max_tokens_cap: int = Field(2048, ge=1, description="largest max_tokens a request may ask for; above it: 400")
    max_prompt_tokens: int = Field(2048, ge=1, description="longest prompt in tokens; above it: 400")
    max_body_bytes: int = Field(1_000_000, ge=1, description="largest request body, bytes; above it: 413")
    calculator: bool = Field(False, description="calculator-aware decoding: after 'expression =' the exact result is "
                             "written for the model (engine transformers only)")
