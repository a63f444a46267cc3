"""The reference actor: a frozen copy of the initial policy that scores responses with per-token
logprobs, in the rollout layout (response tokens only, one value per token), for the KL penalty.
It reads the step's `Rows` from the object store, like the learners, or (`logprobs_of_draws`) builds
them from the engines' answers, so its pass starts the moment a batch is drawn. Or, with
`reference.host: policy`, no actor: policy learner rank 0 holds the copy (`HostedReference`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tandem.cluster.healing import Call
from tandem.cluster.runtime import startup_heap
from tandem.config import Config

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from tandem.actors.samples import SampleBatch
    from tandem.models.rows import Rows


class ReferenceModel:
    """The body of the reference actor (`ray.remote(ReferenceModel)`; usable in-process too)."""

    @startup_heap()
    def __init__(
        self,
        path: str,
        dtype: str = "float32",
        batch_size: int = 32,
        core_sharers: int | None = None,
        min_forward_tokens: int = 1024,
    ) -> None:
        """`core_sharers`: compute with the node's cores split that many ways (PPO says how many
        roles compute beside it: `Roles._scorers`); None keeps Ray's count. `min_forward_tokens`:
        see `Rows.length_groups`."""
        import torch

        from tandem.cluster.runtime import core_share, setup_env
        from tandem.models import load_causal_lm, load_tokenizer

        setup_env()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_causal_lm(path, dtype).eval().requires_grad_(False).to(self.device)
        self.pad_id = load_tokenizer(path).pad_token_id
        self.batch_size, self.min_forward_tokens = batch_size, min_forward_tokens
        self.threads = torch.get_num_threads() if core_sharers is None else core_share(core_sharers)

    def logprobs(self, rows: Rows) -> np.ndarray:
        """log p_ref(response[t] | prompt, response[:t]) of every response token, in the rollout
        layout (B, R); at most `batch_size` rows per forward, in groups of like length."""
        from tandem.cluster.runtime import compute_threads
        from tandem.models.rows import model_logprobs

        with compute_threads(self.threads):
            return model_logprobs(self.model, rows, self.device, self.batch_size, self.min_forward_tokens)

    def logprobs_of_draws(self, prompt_ids: Sequence[Sequence[int]], *parts: SampleBatch) -> np.ndarray:
        """`logprobs` of the engines' answers to one request (`parts` in request order; a Ray call
        given their refs runs as soon as they are drawn), `prompt_ids` being the request's prompts."""
        from tandem.actors.samples import SampleBatch

        return self.logprobs(SampleBatch.concat(parts).rows(prompt_ids, self.pad_id))


def make_reference_actor(
    cfg: Config,
    path: str | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    placement: tuple[Any, int] | None = None,
    core_sharers: int | None = None,
) -> Any:
    """Start the reference actor for the policy at `path` (default: `cfg.model.path`), in the
    engines' dtype (`model.dtype`), placed and batched by the `reference` section (`cpus`/`gpus`
    override it; `placement` = (placement group, bundle index) colocates it there; `core_sharers`: see
    `ReferenceModel`)."""
    import ray

    from tandem.cluster.runtime import placement_options, worker_env

    ref = cfg.reference
    actor = ray.remote(ReferenceModel).options(
        num_cpus=ref.cpus if cpus is None else cpus,
        num_gpus=ref.gpus if gpus is None else gpus,
        **placement_options(ref.resources, placement),
        runtime_env={"env_vars": worker_env()},
    )
    return actor.remote(
        path or cfg.model.path, cfg.model.dtype, ref.batch_size, core_sharers, cfg.learner.min_forward_tokens
    )


class HostedReference:
    """The reference held by policy learner rank 0 (`reference.host: policy`), called as a
    `tandem.cluster.healing.Restartable` is, with "logprobs" only: a Ray actor runs its calls in
    order, so a pass waiting on a draw would hold up the training behind it. Nothing is healed
    here: a dead rank 0 fails its group's call, and the job restarts."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.actor = policy, policy.actors[0]

    def ready(self) -> None:
        """Built by the policy group's `setup`."""

    def submit(self, method: str, *args: Any) -> Call:
        if method != "logprobs":
            raise ValueError(f"the policy-hosted reference answers 'logprobs' only, not {method!r}")
        return Call(method, args, self.actor.reference_logprobs.remote(*args), self.actor)

    def result(self, call: Call, timeout_s: float) -> Any:
        return self.policy.collect([call.ref], "reference_logprobs", timeout_s)[0]

    def shutdown(self) -> None:
        """Stopped with the policy group."""


def reference_role(
    cfg: Config, path: str, policy: Any, placement: tuple[Any, int] | None, core_sharers: int, heals: Any
) -> Any:
    """The job's reference as `reference.host` says: the policy group's rank 0 (`policy`), or an actor
    (`make_reference_actor`, healed in place by `heals`, a `tandem.cluster.healing.Heals`)."""
    from functools import partial

    from tandem.cluster.healing import Restartable

    if cfg.reference.host == "policy":
        return HostedReference(policy)
    start = partial(make_reference_actor, cfg, path, placement=placement, core_sharers=core_sharers)
    ref = cfg.reference
    asks = {"CPU": ref.cpus, "GPU": ref.gpus}
    return Restartable("reference actor", start, asks, cfg.run.timeouts.startup_s, heals)
