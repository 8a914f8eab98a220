"""Data-parallel training of a fused_rnn.LSTM with torch.distributed (DistributedDataParallel).

A tiny synthetic task: each sequence holds random numbers and has its own length (padded input +
``lengths``, no packing); the model predicts the sum of the valid part from the final hidden state.

Run on the CPU with two processes (gloo):

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py

On GPUs (NCCL, one GPU per process): add ``--device cuda``. Without torchrun it runs as a single
process. ``--place`` and ``--pipeline-chunks`` additionally split every replica's layers over
devices (e.g. ``--place cpu,cpu --pipeline-chunks 4``; with CUDA, ``cuda`` entries mean this
process's GPU); DDP then runs without device_ids, as it must for a multi-device module.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import fused_rnn


class SumRegressor(nn.Module):
    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.rnn = fused_rnn.LSTM(1, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, lengths):
        _, (h_n, _) = self.rnn(x, lengths=lengths)
        return self.head(h_n[-1].to(self.head.weight.device)).squeeze(-1)


def synthetic_data(count: int, steps: int, seed: int = 0) -> TensorDataset:
    """The same data in every process (each one reads its own part through the sampler)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(count, steps, 1, generator=gen) * 2 - 1
    lengths = torch.randint(1, steps + 1, (count,), generator=gen)
    valid = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
    x = x * valid.unsqueeze(-1)  # padding is zero (and masked anyway)
    return TensorDataset(x, lengths, x.sum(dim=(1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--place", help="comma-separated device per layer, e.g. cpu,cpu")
    parser.add_argument("--pipeline-chunks", type=int, default=1)
    parser.add_argument("--save", help="rank 0 writes the model's state_dict here")
    args = parser.parse_args()

    # torchrun sets these; without it, a world of one.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway; this keeps runs reproducible

    model = SumRegressor(args.hidden, args.layers).to(device)
    if args.place:
        layer_devices = [device if name == "cuda" else torch.device(name) for name in args.place.split(",")]
        model.rnn.place_layers(layer_devices, pipeline_chunks=args.pipeline_chunks)
        model.head.to(layer_devices[-1])
        ddp = DistributedDataParallel(model)  # multi-device module: no device_ids
    else:
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    data = synthetic_data(args.samples, args.steps)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    if rank == 0:
        print(f"world size {world}, backend {backend}, {len(data)} sequences, "
              f"{len(loader)} steps/epoch per process; model: {model.rnn}")

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        began = time.perf_counter()
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, sample count
        for x, lengths, target in loader:
            x, target = x.to(device), target.to(device)
            prediction = ddp(x, lengths)
            loss = nn.functional.mse_loss(prediction, target.to(prediction.device))
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over the processes here
            optimizer.step()
            total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        if rank == 0:
            print(f"epoch {epoch + 1}: mean squared error {total[0].item() / total[1].item():.4f} "
                  f"({time.perf_counter() - began:.1f} s)")

    if args.save and rank == 0:
        torch.save(model.state_dict(), args.save)  # torch's names: loads into torch.nn.LSTM too
        print(f"saved {args.save}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
