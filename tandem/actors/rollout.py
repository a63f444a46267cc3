"""Rollout engines: Ray actors each hosting one vLLM engine (or, with `rollout.backend: transformers`,
a transformers model: `tandem.actors.transformers_engine`), and the driver-side group over them.

On CPU the engine runs in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0: a 2-4 s start
and 1 GB, against 20-35 s and 2.3 GB for the multiprocess engine). On GPUs an engine may span several
GPUs (tensor parallel); its workers then live in a placement group of one bundle per GPU.

Each engine carries a weight version: 0 for the weights it was started with, +1 per weight sync.
Every sample records the version it was drawn with, so the driver can tell stale samples apart.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tandem.actors.samples import Sample, SampleBatch
from tandem.cluster.calls import Callee, get, get_one
from tandem.cluster.runtime import startup_heap
from tandem.config import Config, ModelConfig, RolloutConfig

if TYPE_CHECKING:
    from tandem.actors.rollout_request import RolloutRequest

logger = logging.getLogger(__name__)

EXTENSION = "tandem.actors.vllm_ext.WeightSyncExtension"


class RolloutEngine:
    """The body of a rollout actor (wrapped with `ray.remote` by `RolloutGroup`; usable in-process)."""

    @startup_heap()
    def __init__(
        self, model: ModelConfig, rollout: RolloutConfig, seed: int = 0, core_sharers: int = 1
    ) -> None:
        from tandem.cluster.runtime import cuda_available, setup_env

        setup_env()  # before vLLM is imported: the in-process engine on CPU
        from vllm import LLM

        from tandem.models import resolve_model

        self.model_cfg, self.rollout_cfg = model, rollout
        self.path = resolve_model(model.path)
        on_gpu = cuda_available()
        if not on_gpu:
            import torch

            # Before the engine starts: vLLM's CPU worker then disables torch.set_num_threads.
            torch.set_num_threads(engine_threads(rollout, core_sharers))
        memory: dict[str, Any] = (
            {"gpu_memory_utilization": rollout.gpu_memory_utilization}
            if on_gpu
            else {"kv_cache_memory_bytes": rollout.kv_cache_mb << 20}
        )
        if rollout.tensor_parallel_size > 1:
            # Workers become Ray actors in the placement group this actor was scheduled into.
            memory["distributed_executor_backend"] = "ray"
        started = time.perf_counter()
        gc.freeze()  # vLLM's model loader collects twice: over vLLM's own objects that took 1.5 s
        self.llm = LLM(
            model=self.path,
            dtype=model.dtype,
            seed=seed,
            max_model_len=model.max_prompt_len + model.max_response_len,
            max_num_seqs=rollout.max_num_seqs,
            tensor_parallel_size=rollout.tensor_parallel_size,
            # CUDA graphs pay off on GPUs; on CPU eager starts in seconds (see `enforce_eager`).
            enforce_eager=not on_gpu if rollout.enforce_eager is None else rollout.enforce_eager,
            worker_extension_cls=EXTENSION,
            **memory,
        )
        self.startup_s = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.last_sync: dict[str, float] = {}
        # Printed, not logged: Ray forwards actor stdout to the driver's console, once per engine.
        print(f"vLLM engine for {self.path} up in {self.startup_s:.1f} s", flush=True)

    # -- generation ---------------------------------------------------------------------------

    def _sampling(
        self, n: int, greedy: bool, max_tokens: int | None, temperature: float | None, seed: int | None = None
    ) -> Any:
        from vllm import SamplingParams

        s = self.rollout_cfg.sampling
        return SamplingParams(
            n=n,
            temperature=0.0 if greedy else s.temperature if temperature is None else temperature,
            top_p=1.0 if greedy else s.top_p,
            top_k=-1 if greedy else s.top_k,
            max_tokens=max_tokens or self.model_cfg.max_response_len,
            logprobs=0,  # 0 = only the sampled token's logprob
            detokenize=False,  # decoded in `generate`, in one batch
            seed=seed,
        )

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        n: int = 1,
        greedy: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        index_offset: int = 0,
    ) -> list[Sample]:
        """`n` samples per prompt, prompt-major (prompt 0's samples first), with their logprobs.

        `seed` makes sampling reproducible: prompt i (counted from `index_offset`, its index in the
        whole request when a group splits one over engines) gets seed `seed + i * n`, and vLLM adds
        the sample index; so repeated prompts and different engines still draw different samples.
        """
        limit = self.model_cfg.max_prompt_len
        prompts = [list(p)[-limit:] for p in prompt_token_ids]  # truncate from the left
        params: Any = self._sampling(n, greedy, max_tokens, temperature)
        if seed is not None and not greedy:
            params = [
                self._sampling(n, greedy, max_tokens, temperature, seed + (index_offset + i) * n)
                for i in range(len(prompts))
            ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        samples = []
        for index, (prompt, out) in enumerate(zip(prompts, outputs), start=index_offset):
            for completion in out.outputs:
                ids = list(completion.token_ids)
                logprobs = [position[tok].logprob for tok, position in zip(ids, completion.logprobs)]
                samples.append(
                    Sample(prompt, ids, logprobs, "", str(completion.finish_reason), self.version, index)
                )
        return self._with_texts(samples)

    def _with_texts(self, samples: list[Sample]) -> list[Sample]:
        """`samples` with their responses decoded, in one batch."""
        # Not by vLLM's incremental detokenizer, which holds back a trailing partial UTF-8
        # character: the text must be exactly what the tokens say, since reward models re-tokenize it.
        texts = self.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
        for sample, text in zip(samples, texts):
            sample.response_text = text
        return samples

    def draw(
        self, prompt_token_ids: Sequence[Sequence[int]], n: int, seed: int, index_offset: int = 0
    ) -> SampleBatch:
        """`generate` for PPO: `n` seeded samples per prompt, answered as one `SampleBatch`."""
        return SampleBatch.from_samples(
            self.generate(prompt_token_ids, n, seed=seed, index_offset=index_offset)
        )

    def generate_text(
        self,
        prompts: Sequence[str | Sequence[Mapping[str, Any]]],
        n: int = 1,
        greedy: bool = True,
        **kwargs: Any,
    ) -> list[Sample]:
        """Render prompts (text or chat messages) with the chat template, then `generate`."""
        from tandem.data.chat import prompt_ids

        return self.generate([prompt_ids(self.tokenizer, p) for p in prompts], n=n, greedy=greedy, **kwargs)

    def score(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Logprobs of given responses under the engine's current weights: one list per sequence,
        one value per response token (the layout of `Sample.logprobs`). Uses prompt logprobs."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        requests = [{"prompt_token_ids": [*p, *r]} for p, r in zip(prompt_ids, response_ids)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for out, response in zip(outputs, response_ids):
            tail = list(zip(response, out.prompt_logprobs[len(out.prompt_logprobs) - len(response) :]))
            result.append([position[tok].logprob for tok, position in tail])
        return result

    # -- weight sync ---------------------------------------------------------------------------

    def num_workers(self) -> int:
        """Ranks this engine takes in the weight broadcast group (one per tensor-parallel worker)."""
        return self.rollout_cfg.tensor_parallel_size

    def init_weight_sync(
        self, master_addr: str, master_port: int, rank_offset: int, world_size: int, timeout_s: float = 300.0
    ) -> None:
        self.llm.collective_rpc(
            "tandem_init_weight_sync", args=(master_addr, master_port, rank_offset, world_size, timeout_s)
        )

    def receive_weights(self, version: int | None = None) -> int:
        """Load one weight stream from the learner; returns the new weight version: `version`, else
        one more than before (a replacement engine takes the others' version). Timings of the last
        sync are in `info()["last_sync"]`."""
        started = time.perf_counter()
        stats = self._receive()
        self.version = self.version + 1 if version is None else version
        self.last_sync = {**stats, "total_s": time.perf_counter() - started}
        logger.info(
            "weights v%d: %d tensors, %.1f MB in %.3f s (%.3f s receiving)",
            self.version,
            stats["tensors"],
            stats["bytes"] / 1e6,
            self.last_sync["total_s"],
            stats["receive_s"],
        )
        return self.version

    def _receive(self) -> dict[str, float]:
        """Load one weight stream; its tensors, bytes and seconds spent receiving."""
        stats = self.llm.collective_rpc("tandem_receive_weights")[0]  # worker 0's; the others match
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        return stats

    def info(self) -> dict[str, Any]:
        """Model path, startup seconds, compute threads, weight version and the last sync's numbers
        (tensors, bytes, total_s, receive_s: the rest is vLLM's loading), for the driver's logs."""
        import torch

        return {
            "path": self.path,
            "startup_s": self.startup_s,
            "threads": torch.get_num_threads(),
            "weight_version": self.version,
            "last_sync": self.last_sync,
        }


def engine_threads(rollout: RolloutConfig, core_sharers: int) -> int:
    """An engine's compute threads on CPU: `rollout.threads`, else its share of the node's cores
    (`core_sharers` 2: the learners train while it generates, in asynchronous PPO)."""
    from tandem.cluster.runtime import core_share

    return rollout.threads or core_share(rollout.num_engines * core_sharers)


def engine_class(rollout: RolloutConfig) -> type[RolloutEngine]:
    """The engine body `rollout.backend` names."""
    if rollout.backend == "transformers":
        from tandem.actors.transformers_engine import TransformersEngine

        return TransformersEngine
    return RolloutEngine


def _split(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal [start, end) ranges; the first `n_items % n_parts` get one more."""
    base, extra = divmod(n_items, n_parts)
    ranges, start = [], 0
    for i in range(n_parts):
        end = start + base + (i < extra)
        ranges.append((start, end))
        start = end
    return ranges


class RolloutGroup:
    """The driver's handle on `rollout.num_engines` engine actors: spreads prompts over them, gathers
    results in prompt order; an engine that dies or misses its deadline is healed in place
    (`tandem.actors.rollout_request`)."""

    def __init__(self, cfg: Config, engines: Sequence[Any] | None = None, core_sharers: int = 1) -> None:
        from tandem.cluster.healing import Heals
        from tandem.cluster.runtime import worker_env

        self.cfg, self._core_sharers = cfg, core_sharers
        self.heals = Heals("rollout.max_engine_restarts", cfg.rollout.max_engine_restarts)
        #: Called with a replacement engine (None when the survivors took the dead one's share), its
        #: node, and whether it must load the weights the others sample with before it serves.
        self.on_replace: Callable[[Any | None, str | None, bool], None] | None = None
        self.replaced: dict[Any, Any] = {}  # a dead or stuck engine -> the engine taking its calls
        self.options: list[dict[str, Any]] = []  # per engine: how it was started (none if given)
        self.engines, self._pgs = list(engines or []), []
        self.node_ids: list[str | None] = [None] * len(self.engines)
        if engines is not None:
            return
        r = cfg.rollout
        try:
            for i in range(r.num_engines):
                options: dict[str, Any] = {
                    "num_cpus": r.cpus_per_engine,
                    "num_gpus": r.gpus_per_engine,
                    "resources": dict(r.resources),
                    "runtime_env": {"env_vars": worker_env()},
                }
                if r.tensor_parallel_size > 1:
                    options.update(self._tensor_parallel_options(r))
                self.options.append(options)
                self.engines.append(self.start_engine(i))
            self.wait_ready()
        except BaseException:
            self.shutdown()  # no half-started group left holding CPUs/GPUs
            raise

    def start_engine(self, i: int) -> Any:
        import ray

        # Engine seeds differ so unseeded engines do not draw the same samples.
        actor = ray.remote(engine_class(self.cfg.rollout)).options(**self.options[i])
        return actor.remote(self.cfg.model, self.cfg.rollout, self.cfg.run.seed + i, self._core_sharers)

    def _tensor_parallel_options(self, r: RolloutConfig) -> dict[str, Any]:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # vLLM's Ray executor places one worker per bundle of the placement group it runs in.
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(r.tensor_parallel_size)]
        bundles[0].update(r.resources)  # the engine's custom resources pin its first worker's node
        pg = placement_group(bundles, strategy="STRICT_PACK")
        get_one(pg.ready(), "placement", self.cfg.run.timeouts.startup_s, Callee("rollout engine"))
        self._pgs.append(pg)
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_capture_child_tasks=True
        )
        return {"num_gpus": 0, "num_cpus": 0, "resources": {}, "scheduling_strategy": strategy}

    def wait_ready(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Block until every engine is up; returns their `info()` (startup times included). An engine
        not placed within `timeout_s` (default: run.timeouts.startup_s) is an error naming what it
        asks for and what the cluster has."""
        from tandem.cluster.groups import wait_ready

        r, timeout_s = self.cfg.rollout, timeout_s or self.cfg.run.timeouts.startup_s
        engines = {f"rollout engine {i}": e for i, e in enumerate(self.engines)}
        nodes = wait_ready(engines, {"CPU": r.cpus_per_engine, "GPU": r.gpus_per_engine}, timeout_s)
        self.node_ids = [nodes[name] for name in engines]
        callees = [Callee(name, None, node) for name, node in zip(engines, self.node_ids)]
        return get([e.info.remote() for e in self.engines], "info", timeout_s, callees)

    def name_of(self, engine: Any) -> str:
        return f"rollout engine {self.engines.index(engine)}" if engine in self.engines else "rollout engine"

    def node_of(self, engine: Any) -> str | None:
        return self.node_ids[self.engines.index(engine)] if engine in self.engines else None

    def submit(
        self, method: str, items: Sequence[Any], *extra: Sequence[Any], **kwargs: Any
    ) -> RolloutRequest:
        """Contiguous slices of the items to the engines at once; `results()` of the request waits
        for them. An engine runs its calls in order: a weight sync submitted later loads once this
        call is done, so it samples with the weights it had when called."""
        from tandem.actors.rollout_request import RolloutRequest, Share

        items = list(items)
        request = RolloutRequest(
            self, method, items, tuple(map(list, extra)), kwargs, self.cfg.run.timeouts.generate_s
        )
        for engine, (a, b) in zip(self.engines, _split(len(items), len(self.engines))):
            if b > a:
                request.shares.append(Share(engine, a, b, request.issue(engine, a, b)))
        return request

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], n: int = 1, greedy: bool = False, **kwargs: Any
    ) -> list[Sample]:
        """`n` samples per prompt over all engines, prompt-major in the order of `prompt_token_ids`."""
        return self.submit("generate", list(prompt_token_ids), n=n, greedy=greedy, **kwargs).results()

    def generate_text(
        self, prompts: Sequence[Any], n: int = 1, greedy: bool = True, **kwargs: Any
    ) -> list[Sample]:
        return self.submit("generate_text", list(prompts), n=n, greedy=greedy, **kwargs).results()

    def shutdown(self) -> None:
        import ray

        for engine in self.engines:
            ray.kill(engine)
        for pg in getattr(self, "_pgs", []):
            ray.util.remove_placement_group(pg)
        self.engines, self._pgs = [], []
