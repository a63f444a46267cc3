"""The reference actor: a frozen copy of the initial policy that scores responses with per-token
logprobs, in the rollout layout (response tokens only, one value per token), for the KL penalty.
It reads the step's `Rows` from the object store, like the learners."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tandem.config import Config

if TYPE_CHECKING:
    import numpy as np

    from tandem.models.rows import Rows


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

    def logprobs(self, rows: Rows) -> np.ndarray:
        """log p_ref(response[t] | prompt, response[:t]) of every response token, in the rollout
        layout (B, R); `batch_size` rows per forward."""
        import torch

        from tandem.models.rows import concat_rows
        from tandem.models.tokens import token_logprobs

        out = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows.select(slice(start, start + self.batch_size))
                logprobs, target_mask = token_logprobs(self.model, chunk.tokens(self.device))
                out.append(chunk.from_targets(logprobs, target_mask))
        return concat_rows(out)


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
