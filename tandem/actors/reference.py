"""The reference actor: a frozen copy of the initial policy that scores responses with per-token
logprobs, in the rollout layout (response tokens only, one value per token), for the KL penalty."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tandem.config import Config


class ReferenceModel:
    """The body of the reference actor (`ray.remote(ReferenceModel)`; usable in-process too)."""

    def __init__(self, path: str, dtype: str = "float32", batch_size: int = 32) -> None:
        import torch

        from tandem.cluster.runtime import setup_env
        from tandem.models import load_causal_lm, load_tokenizer

        setup_env()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_causal_lm(path, dtype).eval().requires_grad_(False).to(self.device)
        self.pad_id = load_tokenizer(path).pad_token_id
        self.batch_size = batch_size

    def logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """log p_ref(response[t] | prompt, response[:t]) for every response token of every sequence."""
        from tandem.models.tokens import response_logprobs

        return response_logprobs(self.model, prompt_ids, response_ids, self.pad_id, self.batch_size)


def make_reference_actor(
    cfg: Config,
    path: str | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    placement: tuple[Any, int] | None = None,
) -> Any:
    """Start the reference actor for the policy at `path` (default: `cfg.model.path`), in the
    engines' dtype (`model.dtype`), placed and batched by the `reference` section (`cpus`/`gpus`
    override it; `placement` = (placement group, bundle index) colocates it there)."""
    import ray

    from tandem.cluster.runtime import placement_options, worker_env

    ref = cfg.reference
    actor = ray.remote(ReferenceModel).options(
        num_cpus=ref.cpus if cpus is None else cpus,
        num_gpus=ref.gpus if gpus is None else gpus,
        **placement_options(ref.resources, placement),
        runtime_env={"env_vars": worker_env()},
    )
    return actor.remote(path or cfg.model.path, cfg.model.dtype, ref.batch_size)
