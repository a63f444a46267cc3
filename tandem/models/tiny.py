"""Embedded tiny models: a tokenizer and random-init Qwen2 / Llama causal LMs, built offline.

They make every stage of tandem runnable with no network: the tokenizer is trained here on the
built-in tasks' text plus generic ASCII, the weights are seeded random inits, and both are saved as
an ordinary Hugging Face directory (safetensors), which transformers, vLLM and DeepSpeed load like
any hub checkpoint.

Builds are deterministic, and the directory name carries a hash of everything that shapes the
files (`models/<name>-<hash>` under `$TANDEM_CACHE` or `~/.cache/tandem`), so a changed recipe
builds a fresh directory instead of reusing a stale one. Several processes (Ray actors) may ask for
the same model at once: each builds in a temporary directory and renames it into place atomically,
and a loser of that race simply uses the winner's directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

from tandem.errors import UserError
from tandem.tasks import BUILTIN_TASKS

#: Bump when the build recipe changes in a way the hashed spec below does not capture.
FORMAT_VERSION = 1
SEED = 0

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|bos|>", "<|end|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, SYSTEM, USER, ASSISTANT]  # ids 0..6, in this order
VOCAB_SIZE = 512  # an upper bound: BPE stops earlier when no pair occurs twice
MAX_LENGTH = 256
_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)

# No newlines between turns: every token counts in a 256-position model. BOS comes from the
# template, not from a tokenizer post-processor, so encoding a response's text alone adds nothing.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<|end|>"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Shared by both architectures: 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32).
_COMMON = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": MAX_LENGTH,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
ARCHITECTURES: dict[str, dict] = {
    "tiny-qwen2": dict(model_type="qwen2", **_COMMON),
    "tiny-llama": dict(model_type="llama", **_COMMON),
}
EMBEDDED_MODELS: tuple[str, ...] = tuple(ARCHITECTURES)

# Builds in one process take turns: seeding torch's global RNG is not thread-safe. Processes need
# no lock: each builds its own temporary directory and the rename decides the winner.
_BUILD_LOCK = threading.Lock()

_GENERIC_TEXT = """\
The quick brown fox jumps over the lazy dog. A model learns from data; a reward tells it what we want.
Please answer the question below. What is the result? It is 42, not 41! Numbers: 0 1 2 3 4 5 6 7 8 9 10.
Write a short list, separated by spaces, in order. Yes, no, maybe: (a) [b] {c} <d> "e" 'f' #g $h %i &j *k.
You are a helpful assistant. Think step by step, then give the final answer. Thank you.
"""


def cache_root() -> Path:
    """Where embedded models live: `$TANDEM_CACHE` or `~/.cache/tandem`."""
    return Path(os.environ.get("TANDEM_CACHE") or Path.home() / ".cache" / "tandem").expanduser()


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    rng = random.Random(SEED)
    texts = _GENERIC_TEXT.splitlines() * 20
    # Every printable ASCII character on its own: each is seen at least once in training. (Any input
    # encodes regardless: the byte-level alphabet covers all 256 bytes.)
    texts += [chr(c) for c in range(32, 127)]
    for task in BUILTIN_TASKS:
        texts += task.corpus(rng, 2000)
    return tuple(texts)


def _spec(name: str, corpus: tuple[str, ...]) -> dict:
    return {
        "format": FORMAT_VERSION,
        "seed": SEED,
        "name": name,
        "architecture": ARCHITECTURES[name],
        "tokenizer": {
            "vocab_size": VOCAB_SIZE,
            "special": SPECIAL_TOKENS,
            "template": CHAT_TEMPLATE,
            "split": _SPLIT_REGEX,
        },
        "corpus_sha256": hashlib.sha256("\n".join(corpus).encode()).hexdigest(),
    }


def _build_tokenizer(corpus: tuple[str, ...]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Qwen2's exact pipeline (NFC, its split regex, byte-level): transformers 5 rebuilds a qwen2
    # checkpoint's tokenizer as Qwen2Tokenizer with this pipeline whatever tokenizer.json says, so
    # any other choice would tokenize differently under the two architectures. The regex isolates
    # each digit and each space, so numbers are single tokens the tasks can be learned over.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        # Named explicitly: Qwen2Tokenizer otherwise defaults to a "<|endoftext|>" it would add.
        unk_token=UNK,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT],
        model_max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _build_model(name: str, tokenizer, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    arch = dict(ARCHITECTURES[name])
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=len(tokenizer), **arch, **ids)
    config.dtype = torch.float32
    with torch.random.fork_rng():  # seeded init without disturbing the caller's RNG
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(out)


def model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory embedded model `name` lives in (built or not)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED_MODELS)}")
    spec = _spec(name, _corpus())
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir or cache_root()).expanduser() / "models" / f"{name}-{digest}"


def build_tiny_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Build embedded model `name` (tokenizer included) unless already built; return its directory."""
    target = model_dir(name, cache_dir)
    if target.is_dir():
        return target
    with _BUILD_LOCK:
        if not target.is_dir():  # built by another thread while we waited
            _build_into(name, target)
    return target


def _build_into(name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would follow the rename and hide the model from other users
    try:
        tokenizer = _build_tokenizer(_corpus())
        tokenizer.save_pretrained(tmp)
        _build_model(name, tokenizer, tmp)
        (tmp / "tandem_spec.json").write_text(json.dumps(_spec(name, _corpus()), indent=1, sort_keys=True))
        try:
            os.replace(tmp, target)  # atomic: readers see no directory or a complete one
        except OSError:
            if not target.is_dir():  # not a lost race but a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: The end of every "no model" error (here and `tandem.models.loading`'s).
WHAT_IS_A_MODEL = (
    "a model path (model.path, a reward model's path) is an HF save (config.json, weights, tokenizer: "
    f"a run's final/, say), an embedded model ({', '.join(ARCHITECTURES)}) or a hub name"
)


def resolve_model(path_or_name: str) -> str:
    """An embedded model name -> its built directory; anything else (a local directory, or a hub
    name that transformers will fetch) is returned unchanged."""
    # A local directory wins over the embedded name it may share (e.g. a checkpoint saved as
    # ./tiny-qwen2): what is on disk is what the user pointed at.
    if Path(path_or_name).is_dir():
        return path_or_name
    if path_or_name in ARCHITECTURES:
        return str(build_tiny_model(path_or_name))
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path_or_name)
    except HFValidationError:
        # A path that is no folder here (say, a stage's output before that stage ran): told now, in
        # our words, not as transformers' traceback about repository names.
        raise UserError(
            f"no model at {path_or_name!r}: no such folder, and not a hub name ('name' or "
            f"'owner/name'); {WHAT_IS_A_MODEL}"
        ) from None
    return path_or_name
