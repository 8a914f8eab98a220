"""fused_rnn modules under torch.nn.parallel.DistributedDataParallel (gloo, CPU, float64).

Two processes each take half of a batch; DDP averages their gradients, which must equal the
gradients of one process on the whole batch (the loss is a mean over sequences, so the average of
the two half-batch gradients is the full-batch gradient). Covered: an LSTM with hx and lengths, a
batch_first GRU whose layers are placed and pipelined, and an optimizer step keeping the replicas
identical.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import fused_rnn

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
T, B, I, H = 6, 3, 4, 5  # B sequences per process
F64 = torch.float64


def _build(case: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process
    if case == "lstm":
        return fused_rnn.LSTM(I, H, num_layers=2, dtype=F64)
    module = fused_rnn.GRU(I, H, num_layers=2, batch_first=True, dtype=F64)
    return module.place_layers(["cpu", "cpu"], pipeline_chunks=2)


def _data(case: str):
    """The full batch of 2B sequences, the same in every process."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, WORLD * B, I, generator=gen, dtype=F64)
    lengths = torch.randint(1, T + 1, (WORLD * B,), generator=gen)
    lengths[0] = T
    hx = tuple(torch.randn(2, WORLD * B, H, generator=gen, dtype=F64) for _ in range(2))
    weights = torch.randn(T, WORLD * B, H, generator=gen, dtype=F64)  # per-element loss weights
    if case != "lstm":  # batch_first GRU, no hx
        return x.transpose(0, 1).contiguous(), lengths, None, weights.transpose(0, 1).contiguous()
    return x, lengths, hx, weights


def _loss(module, case, x, lengths, hx, weights):
    """Mean over the sequences of a weighted sum of each sequence's outputs and final states."""
    out, state = module(x, hx, lengths=lengths)
    h = state[0] if isinstance(state, tuple) else state
    batch_dim = 1 if case == "lstm" else 0
    per_sequence = (out * weights).sum(dim=tuple(d for d in range(3) if d != batch_dim))
    per_sequence = per_sequence + h.sum(dim=(0, 2))
    return per_sequence.mean()


def _shard(tensor, rank, batch_dim):
    return tensor.narrow(batch_dim, rank * B, B) if tensor is not None else None


def _worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for case in ("lstm", "gru_placed"):
            x, lengths, hx, weights = _data(case)
            # Single process, whole batch.
            reference = _build(case)
            _loss(reference, case, x, lengths, hx, weights).backward()
            # DDP, this rank's half.
            model = DistributedDataParallel(_build(case))
            batch_dim = 1 if case == "lstm" else 0
            shard_hx = tuple(_shard(h, rank, 1) for h in hx) if hx is not None else None
            _loss(model, case, _shard(x, rank, batch_dim), _shard(lengths, rank, 0),
                  shard_hx, _shard(weights, rank, batch_dim)).backward()
            ours = dict(model.module.named_parameters())
            for name, p in reference.named_parameters():
                torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"rank {rank}, {case}, grad of {name}: {m}")
            # One optimizer step: the replicas stay identical.
            torch.optim.SGD(model.parameters(), lr=0.5).step()
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(gathered, flat)
            assert torch.equal(gathered[0], gathered[1]), f"{case}: replicas diverged after a step"
        # Both ranks done before either tears down.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Success: leave without running the interpreter's teardown, where a background thread of
    # the gloo process group (torch's, not ours) now and then aborts the process with
    # "terminate called without an active exception". Failures above still raise as usual.
    os._exit(0)


def test_ddp_gradients_equal_full_batch(tmp_path):
    init_file = str(tmp_path / "store")  # a FileStore: no port to find
    mp.spawn(_worker, args=(init_file,), nprocs=WORLD, join=True)
