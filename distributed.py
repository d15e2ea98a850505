"""torchrun support: one process per device, joined by torch.distributed; a no-op without torchrun.

    torchrun --nproc-per-node 2 train.py ...      # decentralized PPO (DD-PPO, Wijmans et al. 2020)
    torchrun --nproc-per-node 2 baselines.py ...  # the grid split across processes
    torchrun --nproc-per-node 2 test.py ...       # the seeds split across processes

Every helper works unchanged in a plain ``python script.py`` run (one process, no process group), so
the scripts call them unconditionally. Collectives time out after ALRS_DIST_TIMEOUT seconds (default
600): a rank that dies or hangs stops the job with an error instead of a silent wait.
"""
import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600


@contextlib.contextmanager
def process_group(device):
    """Join torchrun's process group for the duration, if launched by it, and yield this process's
    device: cuda:LOCAL_RANK when ``device`` is cuda, else the CPU. The group is gloo on GPUs too:
    everything exchanged lives on the CPU (the controller, a few thousand parameters, its statistics
    and the records rank 0 writes), so NCCL would only add copies. Ranks other than 0 print nothing
    to stdout: rank 0 alone reports (errors still reach stderr)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    # torch._dynamo imported while the group is up (a torch optimizer's constructor imports it) keeps
    # the group alive past destroy_process_group: its gloo threads then run into interpreter exit,
    # which aborts the process now and then (SIGABRT, "terminate called without an active exception").
    # Imported first, it leaves the group to destroy_process_group, which joins those threads.
    import torch._dynamo  # noqa: F401
    timeout = datetime.timedelta(seconds=float(os.environ.get("ALRS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    dist.init_process_group("gloo", timeout=timeout)
    stdout = sys.stdout
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        yield device
        # a normal end: every rank waits for the others (rank 0 may still be writing and plotting)
        # before the group is destroyed
        dist.barrier()
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        dist.destroy_process_group()


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """Rank 0, the one process that writes files and prints."""
    return rank() == 0


def shard(items):
    """This rank's share of ``items``: every world_size-th item from its rank on."""
    return list(items)[rank()::world_size()]


def all_gather(obj):
    """Every rank's ``obj`` (any picklable value, its tensors moved to the CPU), in rank order, on
    every rank."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, to_cpu(obj))
    return gathered


def to_cpu(obj):
    """``obj`` with every tensor in its dicts, lists and tuples on the CPU."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_gradients(parameters):
    """Replace each gradient by its mean over the ranks (one all-reduce of all of them), so every rank
    takes the same optimizer step: DD-PPO's synchronization, once per minibatch."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def merge_moments(mean, var, count):
    """The mean, population variance and count of the union of every rank's samples, from each rank's
    (mean, var, count) (Chan et al.'s combination: exact, as if one process had seen all samples)."""
    if world_size() == 1:
        return mean, var, count
    parts = all_gather((mean, var, count))
    total = sum(n for _, _, n in parts)
    merged_mean = sum(m * n for m, _, n in parts) / total
    merged_var = sum(n * (v + (m - merged_mean) ** 2) for m, v, n in parts) / total
    return merged_mean, merged_var, total


def check_identical(tensor, what):
    """Raise on every rank if ``tensor`` differs between ranks (e.g. DD-PPO's controllers)."""
    if world_size() == 1:
        return
    copies = all_gather(tensor.detach().cpu())
    different = [r for r, copy in enumerate(copies) if not torch.equal(copy, copies[0])]
    if different:
        raise RuntimeError(f"{what} differs between rank 0 and rank(s) {different}")
