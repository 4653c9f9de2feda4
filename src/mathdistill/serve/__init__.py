"""Stage ``serve``: a trained student behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Split as vLLM's OpenAI server is: :mod:`.config` (``ServeConfig``), :mod:`.protocol` (request models, typed
errors, responses from the ``openai`` package's types), :mod:`.batcher` (queue, thread, stopping rules every engine
shares), :mod:`.engine` (the transformers batching engine), :mod:`.llamacpp_engine` (``--engine llamacpp``: a GGUF on
llama.cpp, same API), :mod:`.app` (the routes), :mod:`.vllm` (``--engine vllm`` hands serving to vLLM's own server).
:func:`serve` runs one of them.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UserError
from ..models import DEFAULT_STUDENT, load, resolve
from ..progress import info
from .app import app_for, create_app
from .config import KEY_VAR, ServeConfig
from .engine import Engine
from .vllm import check_vllm, run_vllm, served_name, vllm_command

__all__ = ["KEY_VAR", "Engine", "ServeConfig", "app_for", "check_vllm", "create_app", "llamacpp_app", "serve", "served_name",
           "vllm_command"]


def llamacpp_app(cfg: ServeConfig, spec: Any, name: str, api_key: str | None = None):
    """The app serving ``spec``'s GGUF (:func:`mathdistill.llamacpp.gguf_file_of`) on llama.cpp. Raises
    :class:`UserError` for ``calculator`` (transformers only) and without llama-cpp-python (how to install)."""
    from .. import llamacpp

    if cfg.calculator:
        raise UserError("serve --calculator works with --engine transformers only (llama.cpp's batch is not steered "
                        "token by token here); drop --calculator or use --engine transformers")
    llamacpp.require()
    from .llamacpp_engine import LlamaCppEngine

    return app_for(LlamaCppEngine(llamacpp.GGUFModel(llamacpp.gguf_file_of(spec)), cfg), name=name, api_key=api_key)


def serve(cfg: ServeConfig, model: str = DEFAULT_STUDENT, adapter: str | None = None, api_key: str | None = None) -> None:
    """Serve ``model`` (+ ``adapter``) until interrupted. ``api_key`` (else ``$MATHDISTILL_SERVE_KEY``) turns on
    bearer auth; it is never written anywhere."""
    key = api_key or os.environ.get(KEY_VAR) or None
    spec = resolve(model, adapter)
    name = cfg.served_model_name or served_name(spec)
    loopback = cfg.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and not key:
        info(f"[yellow]warning:[/yellow] listening on {cfg.host} without an API key: anyone who can reach this port can "
             f"use the model (set {KEY_VAR} or --api-key)")
    if cfg.engine == "vllm":
        run_vllm(cfg, spec, key)
    import uvicorn

    if cfg.engine == "llamacpp":
        app = llamacpp_app(cfg, spec, name, key)
        engine = app.state.engine
        how = (f"llama.cpp on {engine.gm.path.name} (threads {engine.threads}); {cfg.max_batch_size} sequence slots",
               f"KV cache {engine.kv_bytes() / 2**30:.2f} GiB, allocated")
    else:
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        m, tok = load(spec, dtype=cfg.dtype, merge=True)  # merged LoRA: no adapter overhead per token
        app = create_app(m, tok, cfg, name=name, api_key=key)
        engine = app.state.engine
        kv = _kv_bytes_per_token(m) * cfg.max_batch_size * min(engine.context_len, cfg.max_prompt_tokens + cfg.max_tokens_cap)
        how = (f"transformers; batch <= {cfg.max_batch_size} rows", f"KV cache at most {kv / 2**30:.2f} GiB")
    info(f"serving {name} on http://{cfg.host}:{cfg.port}/v1  (auth {'on' if key else 'off'}; {how[0]}, "
         f"queue <= {cfg.max_queue}; context {engine.context_len} tokens; {how[1]})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)


def _kv_bytes_per_token(model: Any) -> int:
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(c, "num_attention_heads", 1)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    width = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * kv_heads * head_dim * width
