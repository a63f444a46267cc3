"""The weight-sync wire format's packing alone: a bucket packed into one flat buffer and unpacked
again gives back every tensor bit for bit (on the CPU, and on CUDA tensors under `-m gpu`)."""

from __future__ import annotations

import json

import pytest
import torch

from tandem.cluster.weight_sync import pack_bucket, unpack_bucket

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_pack_unpack_is_bit_exact(device, dtype):
    g = torch.Generator().manual_seed(0)
    shapes = {"embed.weight": (7, 5), "norm.weight": (5,), "scalar": (), "proj.weight": (3, 2, 4)}
    pairs = [(name, torch.randn(shape, generator=g).to(device, dtype)) for name, shape in shapes.items()]
    pairs[0][1][0, 0] = -0.0  # a signed zero survives only a bitwise copy check
    header, flat = pack_bucket(pairs)
    assert flat.device.type == device and flat.dtype == dtype and flat.numel() == 35 + 5 + 1 + 24
    got = list(unpack_bucket(json.loads(json.dumps(header)), flat))  # the header as it travels
    assert [n for n, _ in got] == list(shapes)
    for (_, sent), (_, back) in zip(pairs, got, strict=True):
        assert back.shape == sent.shape and back.dtype == dtype
        assert torch.equal(back.reshape(-1).view(torch.uint8), sent.reshape(-1).view(torch.uint8))


def test_pack_refuses_mixed_dtypes():
    with pytest.raises(ValueError, match="one dtype"):
        pack_bucket([("a", torch.zeros(2)), ("b", torch.zeros(2, dtype=torch.bfloat16))])
