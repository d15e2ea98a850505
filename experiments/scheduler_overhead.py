"""What ALRSScheduler costs a user's training loop, against what watching less validation data costs in
final loss: a CNN (batch norm, dropout) and an MLP on Fashion-MNIST, in a plain loop (Adam at 1e-3,
batch 128), each without a scheduler (the reference of the same run) and with the scheduler at
several ``val_size``; every row over the same seeds, child initializations and batches.

    python experiments/scheduler_overhead.py --data-dir data                # prints the table, writes JSON
    python experiments/scheduler_overhead.py --data-dir data --steps 200 --seeds 1   # a quick look

Overhead is the process CPU time (time.process_time, so other processes on the machine do not count)
spent in the scheduler (its construction and every step() call) over the rest of the same loop, in
percent: measured within one run, so a machine whose load changes between runs does not move it.
The loop's CPU time without a scheduler is printed beside it. The final validation loss is measured
on all 2000 validation images, whatever the scheduler watched.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alrs import ALRSScheduler  # noqa: E402
from alrs.validation import predict  # noqa: E402
from children import to_float  # noqa: E402
from compare import batches  # noqa: E402
from data import load_splits  # noqa: E402
from models import build_model  # noqa: E402
from stats import summarize  # noqa: E402

CONTROLLER = "generalist_mlp_progress"
VAL_IMAGES = 2000


# A small CNN of the kind users write (two conv blocks of 16 and 32 channels with batch norm, max-pool,
# dropout 0.25, a linear head), and the 784-256-128-10 MLP: built by models.py from their names.
MODELS = {"cnn": "rc-c16k3-c32k3-relu-bn-p0.25", "mlp": "mlp"}


def run(architecture, splits, seed, steps, val_size):
    """One training run; val_size "none" trains without a scheduler. Its final val loss, the loop's
    CPU seconds and the CPU seconds spent in the scheduler."""
    torch.manual_seed(seed)
    model = build_model(architecture, 1, (28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    val = (to_float(splits.val_x), splits.val_y)
    started = time.process_time()
    scheduler = None if val_size == "none" else ALRSScheduler.from_pretrained(
        CONTROLLER, optimizer, model, val, total_steps=steps, val_size=None if val_size == "all" else val_size)
    in_scheduler = time.process_time() - started
    for _, batch in zip(range(steps), batches(len(splits.train_y), 128, seed)):
        loss = F.cross_entropy(model(to_float(splits.train_x[batch])), splits.train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            step_started = time.process_time()
            scheduler.step(loss)
            in_scheduler += time.process_time() - step_started
    seconds = time.process_time() - started
    return F.cross_entropy(predict(model, val[0]), val[1]).item(), seconds, in_scheduler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--val-sizes", nargs="+", default=["all", "512", "256", "128"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default=None, help="a JSON file for the figures (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    splits = load_splits("fa-mnist", args.data_dir, train_size=20000, val_size=VAL_IMAGES)
    sizes = ["none"] + [size if size == "all" else int(size) for size in args.val_sizes]
    results = {f"{name}/{size}": {"val_loss": [], "seconds": [], "scheduler_seconds": []}
               for name in args.models for size in sizes}
    for name in args.models:
        for seed in range(args.seeds):  # every size on one seed before the next: a changing load hits all alike
            for size in sizes:
                loss, seconds, in_scheduler = run(MODELS[name], splits, seed, args.steps, size)
                row = results[f"{name}/{size}"]
                row["val_loss"].append(loss), row["seconds"].append(seconds), row["scheduler_seconds"].append(in_scheduler)
                print(f"{name} seed {seed} val_size {size}: {loss:.4f}, {seconds:.1f} s ({in_scheduler:.1f} s in "
                      "the scheduler)", flush=True)
    print(f"\n{args.steps} steps, batch 128, Adam 1e-3, {args.seeds} seeds, {CONTROLLER}; overhead: CPU time in "
          "the scheduler over the rest of the same loop\n")
    print("| child | validation samples watched | final val loss (2000 images) | loop CPU s | in the scheduler | overhead |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for size in sizes:
            row = results[f"{name}/{size}"]
            loss, total, inside = summarize(row["val_loss"]), sum(row["seconds"]), sum(row["scheduler_seconds"])
            overhead = "reference" if size == "none" else f"{100 * inside / (total - inside):.1f}%"
            label = "no scheduler (constant 1e-3)" if size == "none" else f"{VAL_IMAGES if size == 'all' else size}"
            print(f"| {name} | {label} | {loss['mean']:.4f} ± {loss['sem'] or 0:.4f} | {total / args.seeds:.1f} | "
                  f"{inside / args.seeds:.1f} | {overhead} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "controller": CONTROLLER,
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main()
