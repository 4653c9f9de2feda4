"""A causal LM and its tokenizer as one GGUF file that llama.cpp reads right, written with the ``gguf`` package.

- Tensors: llama.cpp's names and layout for the llama/mistral/qwen2 architectures (q/k rows permuted to its
  rotary layout), 2-D weights in f16, q8_0 or q4_0 (rows that are not whole blocks stay f16), norms in f32.
- Tokenizer: as llama.cpp's ``convert_hf_to_gguf.py`` writes a GPT-2-style byte-level BPE (``_set_vocab_gpt2``):
  tokens and token types from the HF vocabulary, ``tokenizer.ggml.pre`` from the hash of the ids of
  :data:`CHKTXT` (llama.cpp's table) or, for a plain GPT-2 regex, by structure; merges, special ids, add-BOS/EOS
  flags and chat template through ``gguf.SpecialVocab``. A tokenizer llama.cpp would split differently is
  refused (:class:`UserError`), never written.

Used by the ``export`` stage and by the llama.cpp backend (which converts a non-GGUF model once).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .errors import UserError
from .models import end_of_turn_ids

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


def _rope_theta(c) -> float:
    theta = getattr(c, "rope_theta", None)
    if theta is None:
        theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _permute_qk(w, n_head: int):
    """llama.cpp stores q/k rows in its rotary layout (interleaved halves); transformers undoes this on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# The text llama.cpp's converter (convert_hf_to_gguf.py, get_vocab_base_pre) encodes with the HF tokenizer: the
# sha256 of the token ids names the pre-tokenizer that llama.cpp must run to split text the same way.
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
          "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
          "------======= нещо на Български \'\'\'\'\'\'```````\"\"\"\"......!!!!!!?????? I\'ve been \'told he\'s there, "
          "\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL")
# chkhsh -> tokenizer.ggml.pre, for tokenizers of the architectures written here (llama, mistral, qwen2);
# the values are those of llama.cpp's own table.
PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
}


# Texts whose token ids llama.cpp must reproduce after an export (with CHKTXT), when llama-cpp-python is installed.
CHECK_TEXTS = [
    " 12 + 35 = 47", "x = (3 + 4) * 2", " $18.50 - $2.25", " 1,234 / 2 =", "The answer is -7.", "\\boxed{\\frac{3}{4}}",
    "98 + 93 = 191\n191 - 77 = 114\n#### 114", "小明有 3 个苹果,又买了 5 个。答案是 8。",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


def _looks_special(token: str) -> bool:
    """Added tokens that are control tokens even when not flagged special (llama.cpp's does_token_look_special)."""
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>"))


def gguf_pre_tokenizer(tok) -> str:
    """``tokenizer.ggml.pre`` for an HF byte-level BPE tokenizer: llama.cpp's name for the way it splits text.

    Found as llama.cpp's ``convert_hf_to_gguf.py`` finds it (sha256 of the ids of :data:`CHKTXT`, table
    :data:`PRE_BY_HASH`); failing that, a tokenizer whose only pre-tokenizer is GPT-2's byte-level regex (no
    normalizer, no prefix space) is ``gpt-2``, whose regex is the same. Raises :class:`UserError` otherwise:
    llama.cpp would split text differently from the tokenizer the student was trained with."""
    from hashlib import sha256

    chkhsh = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    if chkhsh in PRE_BY_HASH:
        return PRE_BY_HASH[chkhsh]
    j = json.loads(tok.backend_tokenizer.to_str())
    pre = j.get("pre_tokenizer") or {}
    if (j.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)):
        return "gpt-2"
    raise UserError(f"export gguf: llama.cpp has no pre-tokenizer known to split text like this tokenizer "
                    f"(pre-tokenizer {json.dumps(pre)[:120]}, chkhsh {chkhsh[:16]}), so the GGUF would tokenize "
                    "differently from training; not written. Use --format merged (or add the tokenizer to "
                    "llama.cpp's convert_hf_to_gguf_update.py)")


def _add_tokenizer(w, config, tok) -> None:
    """Write the tokenizer as llama.cpp's converter does for a GPT-2-style BPE vocabulary (``_set_vocab_gpt2``):
    tokens and types from the HF vocabulary (padded with ``[PADi]`` to the embedding rows), the pre-tokenizer
    name (:func:`gguf_pre_tokenizer`), merges, special ids, add-BOS/EOS flags and chat template through
    ``gguf.SpecialVocab`` on the saved tokenizer, so the file tokenizes exactly as the student was trained."""
    import gguf

    model_json = json.loads(tok.backend_tokenizer.to_str())["model"]
    if model_json.get("type") != "BPE" or model_json.get("byte_fallback"):
        raise UserError(f"export gguf: only byte-level BPE tokenizers are written here, this one is "
                        f"{model_json.get('type')}; use llama.cpp's convert_hf_to_gguf.py on a --format merged export")
    pre = gguf_pre_tokenizer(tok)
    vocab = tok.get_vocab()
    n_vocab = max(getattr(config, "vocab_size", 0) or 0, max(vocab.values()) + 1)
    reverse = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special or _looks_special(reverse[i])
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="mathdistill-tok-") as d:
        tok.save_pretrained(d)
        config.to_json_file(str(Path(d) / "config.json"))
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=n_vocab)
    # what the tokenizer really does to a plain text decides the flags (the saved config may not say)
    probe = tok("1 + 1")["input_ids"]
    special.add_special_token["bos"] = bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id
    if probe and tok.eos_token_id is not None and probe[-1] == tok.eos_token_id:
        special.add_special_token["eos"] = True
    else:
        special.add_special_token.pop("eos", None)  # absent means False to llama.cpp
    eot = end_of_turn_ids(tok) - {tok.eos_token_id}
    if eot:  # a turn ends with a token other than EOS: llama.cpp stops there too (end of generation)
        special.special_token_ids.setdefault("eot", min(eot))
    special.add_to_gguf(w, quiet=True)
    w.add_add_space_prefix(False)  # byte-level BPE: a leading space is a byte of the text, never added


def write_gguf_vocab(config, tok, path: Path) -> None:
    """A vocabulary-only GGUF (tokenizer metadata, no tensors): what llama.cpp's ``--vocab-only`` writes, enough
    for llama.cpp to tokenize (``vocab_only=True``) and for comparing tokenizer keys between files."""
    import gguf

    w = gguf.GGUFWriter(str(path), GGUF_ARCH.get(config.model_type, "llama"))
    w.add_vocab_size(config.vocab_size)
    _add_tokenizer(w, config, tok)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf(model, tok, path: Path, gguf_type: str) -> None:
    """Write a llama-family causal LM and its tokenizer to one GGUF file (llama.cpp's tensor names and layout)."""
    import gguf
    import numpy as np

    c = model.config
    arch = GGUF_ARCH.get(c.model_type)
    if arch is None:
        raise UserError(f"export gguf: architecture {c.model_type!r} is not written here (llama, mistral, qwen2 are); "
                        "use llama.cpp's convert_hf_to_gguf.py on a --format merged export")
    qt = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
          "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]
    n_head, n_kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(Path(str(getattr(c, "_name_or_path", "") or "student")).name or "student")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(_rope_theta(c))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(ftype)
    _add_tokenizer(w, c, tok)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    tied = bool(getattr(c, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"export gguf: no GGUF name for tensor {name!r}")
        data = t.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute_qk(data, n_head)
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute_qk(data, n_kv)
        if data.ndim == 1:
            w.add_tensor(new, data.astype(np.float32))
            continue
        ttype = qt
        if qt != gguf.GGMLQuantizationType.F16 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qt][0]:
            ttype = gguf.GGMLQuantizationType.F16  # rows not a whole number of blocks: keep f16, as llama.cpp does
        if ttype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(new, data.astype(np.float16))
        else:
            w.add_tensor(new, gguf.quants.quantize(data, ttype), raw_dtype=ttype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
