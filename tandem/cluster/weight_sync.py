"""Weight sync from the policy learner to the rollout engines: the broadcast group, the wire format,
and the driver-side orchestration.

One dedicated process group joins learner rank 0 (rank 0 of the group, the only sender) and every
vLLM worker of every engine (ranks 1..N). It is made directly from a `TCPStore` and a
`ProcessGroupGloo` (NCCL on GPUs), beside the learners' own default group, so the two never mix.
The store is hosted by the driver, which makes the rendezvous address one that every member can reach
and a free port that is known before anyone connects.

Wire format, repeated per bucket: an int64 header length, a JSON header (names, shapes, dtype), then
the bucket's tensors flattened into one buffer of one dtype. A zero header length ends the stream.
Tensors never travel through Ray's object store; only the addresses and small control calls do.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tandem.cluster.calls import Callee, get

# dtype names in the header: str(torch.float32) is "torch.float32".
_DTYPES = {str(t): t for t in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


def default_backend() -> str:
    """ "nccl" where CUDA is present, else "gloo": every member decides by the same rule."""
    return "nccl" if torch.cuda.is_available() else "gloo"


class BroadcastGroup:
    """A process group for broadcasts from rank 0, made without a default group."""

    def __init__(
        self,
        master_addr: str,
        master_port: int,
        rank: int,
        world_size: int,
        backend: str | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.backend = backend or default_backend()
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(master_addr, master_port, world_size=None, is_master=False, timeout=timeout)
        # A prefix keeps our keys apart from anything else sharing the store.
        self._store = dist.PrefixStore("tandem-weight-sync", store)
        if self.backend == "gloo":
            self._pg = dist.ProcessGroupGloo(self._store, rank, world_size, timeout)
            self.device = torch.device("cpu")
        elif self.backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._pg = dist.ProcessGroupNCCL(self._store, rank, world_size, options)
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            raise ValueError(f"unknown weight-sync backend {self.backend!r}; expected gloo or nccl")

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Broadcast `tensor` in place from rank 0 (a collective: every member must call it)."""
        self._pg.broadcast(tensor, 0).wait()


def pack_bucket(pairs: Sequence[tuple[str, torch.Tensor]]) -> tuple[dict[str, Any], torch.Tensor]:
    """Same-dtype `(name, tensor)` pairs -> (JSON-able header, one flat buffer on their device).

    One flat buffer per bucket: one collective instead of one per parameter."""
    dtypes = {t.dtype for _, t in pairs}
    if len(dtypes) != 1:
        raise ValueError(f"a bucket holds one dtype, got {sorted(map(str, dtypes))}")
    header = {
        "names": [n for n, _ in pairs],
        "shapes": [list(t.shape) for _, t in pairs],
        "dtype": str(dtypes.pop()),
    }
    return header, torch.cat([t.detach().reshape(-1) for _, t in pairs])


def unpack_bucket(header: dict[str, Any], flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """The inverse of `pack_bucket`: `(name, tensor)` pairs, views into `flat`."""
    numels = [_numel(shape) for shape in header["shapes"]]
    for name, shape, part in zip(header["names"], header["shapes"], flat.split(numels), strict=True):
        yield name, part.view(shape)


def send_bucket(group: BroadcastGroup, pairs: Sequence[tuple[str, torch.Tensor]]) -> int:
    """Send one bucket of same-dtype tensors (rank 0 only); returns its payload bytes."""
    header, flat = pack_bucket(pairs)
    _send_header(group, header)
    flat = flat.to(group.device)
    group.broadcast(flat)
    return flat.numel() * flat.element_size()


def end_stream(group: BroadcastGroup) -> None:
    """Tell the receivers that the stream is complete (rank 0 only)."""
    group.broadcast(torch.zeros(1, dtype=torch.int64, device=group.device))


def receive_stream(
    group: BroadcastGroup, device: torch.device | str | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` pairs as buckets arrive, until the sender ends the stream.

    Lazy on purpose: vLLM's loader consumes it while the sender is still sending, so at most a
    bucket (plus the layer being assembled) is held at once. Tensors are views into a fresh
    per-bucket buffer, so later buckets never overwrite earlier ones. (Receiving the next bucket in
    a thread while the loader works was tried: no gain on 2 CPU cores, where both compete for them.)
    """
    while True:
        length = torch.zeros(1, dtype=torch.int64, device=group.device)
        group.broadcast(length)
        if int(length.item()) == 0:
            return
        raw = torch.empty(int(length.item()), dtype=torch.uint8, device=group.device)
        group.broadcast(raw)
        header = json.loads(bytes(raw.cpu().tolist()).decode())
        numel = sum(_numel(shape) for shape in header["shapes"])
        flat = torch.empty(numel, dtype=_DTYPES[header["dtype"]], device=group.device)
        group.broadcast(flat)
        if device is not None:
            flat = flat.to(device)
        yield from unpack_bucket(header, flat)


class Metered:
    """Counts what passes and times the waits for it (the receiving side of an engine's loading loop)."""

    def __init__(self, it: Iterator[tuple[str, torch.Tensor]]) -> None:
        self._it, self.count, self.nbytes, self.wait_s = it, 0, 0, 0.0

    def __iter__(self) -> Metered:
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        started = time.perf_counter()
        try:
            item = next(self._it)
        finally:
            self.wait_s += time.perf_counter() - started
        self.count += 1
        self.nbytes += item[1].numel() * item[1].element_size()
        return item

    def stats(self) -> dict[str, float]:
        """Tensors, bytes and seconds spent waiting for them, so far."""
        return {"tensors": self.count, "bytes": self.nbytes, "receive_s": self.wait_s}


def _send_header(group: BroadcastGroup, header: dict[str, Any]) -> None:
    data = json.dumps(header).encode()
    group.broadcast(torch.tensor([len(data)], dtype=torch.int64, device=group.device))
    group.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(group.device))


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ---------------------------------------------------------------------------------------------
# Driver side.


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else socket.gethostbyname("localhost")


class WeightSync:
    """The driver's handle on one learner -> engines broadcast group.

    `learners` are the policy learner rank actors (all ranks: under ZeRO-3 gathering full weights is
    a collective), each with `init_weight_sync(addr, port, world_size)` and `sync_weights(bucket_mb)`;
    `engines` are rollout engine actors (`tandem.actors.rollout.RolloutEngine`).

    The rendezvous store lives in this (the driver's) process, so every member must reach the
    driver's node: true for local runs and Ray Jobs (`tandem submit`), not for a Ray Client
    (`ray://`) driver outside the cluster.
    """

    def __init__(
        self,
        learners: Sequence[Any],
        engines: Sequence[Any],
        bucket_mb: int,
        timeout_s: float = 300.0,
        engine_nodes: Sequence[str | None] | None = None,
    ) -> None:
        if not learners or not engines:
            raise ValueError("weight sync needs at least one learner and one engine")
        # An ActorGroup (tandem.cluster.groups) or a plain list of rank actors.
        self.learners, self.engines = list(getattr(learners, "actors", learners)), list(engines)
        role, nodes = getattr(learners, "role", "learner"), getattr(learners, "node_ids", None)
        # Who each call goes to, in the order `_get` waits on them, for errors that name the failed one.
        self._learner_callees = [
            Callee(role, r, nodes[r] if nodes else None) for r in range(len(self.learners))
        ]
        self._engine_callees = [
            Callee(f"rollout engine {i}", None, engine_nodes[i] if engine_nodes else None)
            for i in range(len(self.engines))
        ]
        self.bucket_mb, self.timeout_s = bucket_mb, timeout_s
        self._store: dist.TCPStore | None = None

    def setup(self) -> None:
        """Create the group: host the store here, then every member joins at once (a rendezvous)."""
        addr = _node_ip()
        # Port 0: the OS picks a free port; held by this object for the group's lifetime (NCCL reads
        # the store lazily at the first collective).
        self._store = dist.TCPStore(
            addr,
            0,
            world_size=None,
            is_master=True,
            timeout=timedelta(seconds=self.timeout_s),
            wait_for_workers=False,
        )
        port = self._store.port
        workers = get(
            [e.num_workers.remote() for e in self.engines],
            "weight sync setup",
            self.timeout_s,
            self._engine_callees,
        )
        world_size = 1 + sum(workers)
        refs = [learner.init_weight_sync.remote(addr, port, world_size) for learner in self.learners]
        offset = 1
        for engine, n in zip(self.engines, workers):
            refs.append(engine.init_weight_sync.remote(addr, port, offset, world_size, self.timeout_s))
            offset += n
        get(refs, "weight sync setup", self.timeout_s, self._learner_callees + self._engine_callees)

    def sync(self, version: int | None = None) -> list[int]:
        """Stream the learner's current weights into every engine; returns the engines' new versions
        (`version`, else each one's next)."""
        return self.finish(self.start(version))

    def start(self, version: int | None = None) -> list[Any]:
        """Start the stream; returns its calls, for `finish`. Every member runs its calls in order:
        an engine loads the weights after the calls made to it before, and the calls made after
        wait for them; so does a learner's next call."""
        if self._store is None:
            self.setup()
        receives = [engine.receive_weights.remote(version) for engine in self.engines]
        return [learner.sync_weights.remote(self.bucket_mb) for learner in self.learners] + receives

    def finish(self, calls: list[Any]) -> list[int]:
        """Wait for a stream's `calls`; the engines' new versions."""
        # Fails at the first member to fail: the others would sit in the broadcast until its timeout.
        # The group is then unusable (its members time out): the job's roles are restarted.
        results = get(calls, "weight sync", self.timeout_s, self._learner_callees + self._engine_callees)
        return results[len(self.learners) :]
