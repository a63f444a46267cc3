"""The reward scorer: a weighted sum of reward components, each a reward model, a Python function or
a remote HTTP endpoint, over batches of (prompt, response) text.

Every component returns one float per sample; the scorer returns the weighted total and each
component's own values, so the driver logs `reward/<name>` for every one of them. A component that
raises or returns the wrong count fails with a `RewardError` naming it; so does one that returns a
non-finite value, unless the scorer lets those through (`allow_nonfinite`: PPO's reward actor,
whose driver skips that step's update instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tandem.actors.http_reward import post_rewards
from tandem.cluster.runtime import startup_heap
from tandem.config import Config, RewardComponent
from tandem.errors import UserError

if TYPE_CHECKING:
    from tandem.actors.samples import SampleBatch

Prompt = str | Sequence[Mapping[str, Any]]  # text, or chat messages


class RewardError(UserError):
    """A reward component failed or returned something unusable; the message names it."""


def length_debias(scores: Sequence[float], lengths: Sequence[float], groups: Sequence[Any]) -> list[float]:
    """Corrections that remove the linear length part of `scores`: -b * (length - mean length), b the
    least-squares slope of score on length among answers to the same prompt (`groups`: one key per
    sample; answers to one prompt share it). Within a prompt, longer answers differ from shorter ones
    by what was added, not by the prompt's difficulty or its answer's natural length, which a slope
    pooled over prompts would mix in. With no prompt answered at two lengths the slope is pooled
    over the batch; with no length variation at all there is nothing to remove (zeros)."""
    n = len(scores)
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    within = [idx for idx in by_group.values() if len({lengths[i] for i in idx}) > 1]
    for sets in (within, [list(range(n))]):  # within prompts, else pooled
        sxy = sxx = 0.0
        for idx in sets:
            mean_l = sum(lengths[i] for i in idx) / len(idx)
            mean_s = sum(scores[i] for i in idx) / len(idx)
            sxy += sum((lengths[i] - mean_l) * (scores[i] - mean_s) for i in idx)
            sxx += sum((lengths[i] - mean_l) ** 2 for i in idx)
        if sxx > 0:
            slope, mean_len = sxy / sxx, sum(lengths) / n
            return [-slope * (length - mean_len) for length in lengths]
    return [0.0] * n


@dataclass
class RewardResult:
    total: list[float]  # (B,) sum over components of weight * value
    components: dict[str, list[float]]  # component name -> (B,) its unweighted values


def _describe(c: RewardComponent) -> str:
    return f"reward component {c.name or c.kind!r} ({c.kind} {c.path!r})"


def check_values(values: Any, n: int, what: str, allow_nonfinite: bool = False) -> list[float]:
    """`values` as n floats, finite unless `allow_nonfinite`, or a RewardError saying what is wrong
    and naming `what`."""
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise RewardError(
            f"{what} must return a list of numbers, got {type(values).__name__}: {err}"
        ) from None
    if len(values) != n:
        raise RewardError(f"{what} returned {len(values)} values for {n} samples")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad and not allow_nonfinite:
        raise RewardError(
            f"{what} returned a non-finite value ({values[bad[0]]}) for sample {bad[0]} "
            f"({len(bad)} of {n} samples)"
        )
    return values


class _Function:
    def __init__(self, spec: str, task: str | None) -> None:
        from tandem.data.rewards import load_reward_fn, task_reward

        if spec == "task":
            if task is None:
                raise UserError(
                    'reward function "task" needs `data.task` (the built-in task whose true reward it is)'
                )
            self.fn = task_reward(task)
        else:
            self.fn = load_reward_fn(spec)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        from tandem.data.chat import prompt_text

        return self.fn([prompt_text(p) for p in prompts], list(responses))


class _Model:
    """An HF reward model as `tandem rm` saves it. Input = chat-templated prompt + response tokens +
    EOS (`tandem.data.chat`), right-padded: the same rows the reward learner trained on."""

    def __init__(
        self, path: str, dtype: str, batch_size: int, max_prompt_len: int, max_response_len: int
    ) -> None:
        import torch

        from tandem.models import load_reward_model, load_tokenizer

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_reward_model(path, dtype).eval().requires_grad_(False).to(self.device)
        self.tokenizer = load_tokenizer(path)
        self.batch_size = batch_size
        self.max_prompt_len, self.max_response_len = max_prompt_len, max_response_len

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        import torch

        from tandem.data.chat import prompt_ids, response_ids
        from tandem.models.tokens import pad_rows, truncate

        rows = [
            truncate(
                prompt_ids(self.tokenizer, p),
                response_ids(self.tokenizer, r),
                self.max_prompt_len,
                self.max_response_len + 1,
            )  # +1: the EOS
            for p, r in zip(prompts, responses)
        ]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                batch = pad_rows(rows[start : start + self.batch_size], self.tokenizer.pad_token_id).to(
                    self.device
                )
                logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                scores += logits[:, 0].float().cpu().tolist()
        return scores


class _TokenCount:
    """Tokens of each response's text (no EOS), as the policy's tokenizer counts them."""

    def __init__(self, tokenizer_path: str) -> None:
        from tandem.models import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_path)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        ids = self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]
        return [float(len(row)) for row in ids]


class _Http:
    def __init__(self, c: RewardComponent) -> None:
        self.c = c

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        import os

        token = os.environ.get(self.c.token_env)
        if not token:
            raise RewardError(
                f"{_describe(self.c)}: environment variable {self.c.token_env} (the bearer token) is not set"
            )
        return post_rewards(
            self.c.path,
            list(prompts),
            list(responses),
            token,
            timeout_s=self.c.timeout_s,
            retries=self.c.retries,
            backoff_s=self.c.backoff_s,
        )


class RewardScorer:
    """Scores (prompt, response) batches with the configured components (the reward actor's body).

    Args:
        components: the components, summed with their weights.
        task: built-in task name, for the function component "task".
        rm_path: the directory substituted for a model component whose path is "rm" (this
            pipeline's reward model run; the driver knows where it saved it).
        dtype, batch_size, max_prompt_len, max_response_len: how reward models run.
        length_penalty, tokenizer_path: subtract `length_penalty` per token of each response, as
            the tokenizer at `tokenizer_path` (the policy's) counts them; its counts are the
            component "length_tokens" (weight -length_penalty).
        length_debias: remove the length part of each batch's summed reward (`length_debias`: the
            slope of the components' sum on token count, within prompts); the corrections are the
            component "length_debias" (weight 1). Fit before the length penalty, which still applies.
        allow_nonfinite: return NaN/inf values (the caller skips what they would spoil) instead of
            a RewardError.
    """

    @startup_heap()
    def __init__(
        self,
        components: Sequence[RewardComponent],
        task: str | None = None,
        rm_path: str | None = None,
        dtype: str = "float32",
        batch_size: int = 64,
        max_prompt_len: int = 64,
        max_response_len: int = 32,
        length_penalty: float = 0.0,
        tokenizer_path: str | None = None,
        length_debias: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        self.allow_nonfinite = allow_nonfinite
        if not components:
            raise UserError("`reward.components` is empty: nothing to score with")
        names = [c.name or c.kind for c in components] + (["length_tokens"] if length_penalty else [])
        names += ["length_debias"] if length_debias else []
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(
                f"reward components share the metric name(s) {dupes}: give each a distinct `name`"
            )
        self.components = list(components)
        self.names = names
        self._fns = []
        for c in components:
            if c.kind == "function":
                self._fns.append(_Function(c.path, task))
            elif c.kind == "model":
                path = rm_path if c.path == "rm" else c.path
                if path is None:
                    raise UserError('reward model path "rm" needs the reward model run of this pipeline')
                self._fns.append(_Model(path, dtype, batch_size, max_prompt_len, max_response_len))
            else:
                self._fns.append(_Http(c))
        if (length_penalty or length_debias) and tokenizer_path is None:
            raise UserError(
                "`reward.length_penalty`/`length_debias` need the policy's tokenizer to count tokens"
            )
        self.length_penalty = length_penalty
        self._count = _TokenCount(tokenizer_path) if length_penalty or length_debias else None
        if length_penalty:
            self.components.append(
                RewardComponent(kind="function", path="length", name="length_tokens", weight=-length_penalty)
            )
            self._fns.append(self._count)
        self.length_debias = length_debias

    @classmethod
    def from_config(cls, cfg: Config, rm_path: str | None = None) -> RewardScorer:
        return cls(*_scorer_args(cfg, rm_path))

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardResult:
        """Rewards of a batch; `prompts` are text or chat messages, `responses` decoded text."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = len(responses)
        total = [0.0] * n
        parts: dict[str, list[float]] = {}
        for c, name, fn in zip(self.components, self.names, self._fns):
            if n == 0:
                parts[name] = []
                continue
            try:
                raw = fn(prompts, responses)
            except RewardError:
                raise
            except Exception as err:  # a user's function may fail in any way: say which one
                raise RewardError(f"{_describe(c)} raised {type(err).__name__}: {err}") from err
            values = check_values(raw, n, _describe(c), self.allow_nonfinite)
            parts[name] = values
            total = [t + c.weight * v for t, v in zip(total, values)]
        if self.length_debias and n:
            lengths = parts.get("length_tokens") or self._count(prompts, responses)
            # Fit on the components' sum without the penalty, which is all length and stays.
            fitted = [t + self.length_penalty * n_tokens for t, n_tokens in zip(total, lengths)]
            groups = [repr(p) for p in prompts]  # text or chat messages: equal prompts, equal keys
            parts["length_debias"] = length_debias(fitted, lengths, groups)
            total = [t + c for t, c in zip(total, parts["length_debias"])]
        return RewardResult(total, parts)

    def score_draws(self, prompts: Sequence[Prompt], *parts: SampleBatch) -> RewardResult:
        """`score` of the engines' answers to one request (`parts` in request order; a Ray call given
        their refs runs as soon as they are drawn), `prompts` being the request's prompts."""
        # Texts and prompt indices only, not `SampleBatch.concat`: its padding (`tandem.models.rows`)
        # imports torch, 2 s of CPU in a scorer of functions that never needs it.
        indices = [i for part in parts for i in part.prompt_index.tolist()]
        return self.score([prompts[i] for i in indices], [t for part in parts for t in part.texts])


def make_reward_actor(
    cfg: Config, rm_path: str | None = None, placement: tuple[Any, int] | None = None
) -> Any:
    """Start the reward actor (`RewardScorer` in a Ray actor with `reward.cpus`/`reward.gpus`;
    `placement` = (placement group, bundle index) colocates it there). It answers NaN/inf scores
    as they are, for the driver to skip (`ppo.max_nonfinite_steps`)."""
    import os

    import ray

    from tandem.cluster.runtime import placement_options, worker_env

    # The actor may run on another node: hand it the HTTP components' tokens from the driver's env.
    tokens = {
        c.token_env: os.environ[c.token_env]
        for c in cfg.reward.components
        if c.kind == "http" and c.token_env in os.environ
    }
    actor = ray.remote(RewardScorer).options(
        num_cpus=cfg.reward.cpus,
        num_gpus=cfg.reward.gpus,
        **placement_options(cfg.reward.resources, placement),
        runtime_env={"env_vars": {**worker_env(), **tokens}},
    )
    # NaN/inf scores reach the driver, which skips that step's update (ppo.max_nonfinite_steps).
    return actor.remote(*_scorer_args(cfg, rm_path), allow_nonfinite=True)


def _scorer_args(cfg: Config, rm_path: str | None) -> tuple:
    """`RewardScorer`'s constructor arguments from a job's config (in-process or as an actor)."""
    m = cfg.model
    return (
        cfg.reward.components,
        cfg.data.task,
        rm_path,
        m.dtype,
        cfg.reward.batch_size,
        m.max_prompt_len,
        m.max_response_len,
        cfg.reward.length_penalty,
        m.path,
        cfg.reward.length_debias,
    )
