"""Sweep the step-decay baseline grid (and constant and cosine rates) for one dataset and child.

    python baselines.py --dataset fa-mnist --architecture cnn

lr = lr0 * factor ** floor(step / discount_step) over --initial-lrs x --discount-steps x
--discount-factors (48 runs by default), plus, for each --initial-lrs, a constant lr0 and a cosine
annealing from lr0 to 0 over the episode (torch's CosineAnnealingLR). Every run starts from the same
child initialization and sees the same batches. Results are appended to
runs/baselines/<setting>/results.jsonl as they finish (a rerun skips finished ones and adds new kinds);
the best configuration of each kind, by final validation loss, goes to best.json with its curves.
"""
import itertools
import math
import sys

from tqdm import tqdm

import distributed
import flags
from tasks import load_task_splits, task_from_args
from environment import EPISODE_METRICS as METRICS, EnvConfig, run_synced
from plots import plot_schedules
from runs import baseline_dir, best_of, check_writable
from schedules import BASELINE_KINDS, baseline_schedule
from utils import append_jsonl, drop_torn_last_line, json_floats, read_jsonl, resolve_device, run_cli, save_json


def grid(args):
    """The run list: plain dicts, step decay first, then one constant rate and one cosine annealing
    per initial lr."""
    runs = [{"name": f"step_lr{lr:g}_every{step}_x{factor:g}", "kind": "step_decay", "initial_lr": lr,
             "discount_step": step, "discount_factor": factor}
            for lr, step, factor in itertools.product(args.initial_lrs, args.discount_steps, args.discount_factors)]
    runs += [{"name": f"constant_lr{lr:g}", "kind": "constant", "initial_lr": lr} for lr in args.initial_lrs]
    runs += [{"name": f"cosine_lr{lr:g}", "kind": "cosine", "initial_lr": lr} for lr in args.initial_lrs]
    return runs


def run_schedules(runs, config, splits, seed, device):
    """Train one child per run with its fixed schedule, all from the same seed (synced)."""
    curves = run_synced([baseline_schedule(run, config.num_train_steps) for run in runs], config, splits, seed, device)
    return [{**run, "diverged": bool(curves["diverged"][i]),
             **dict(zip(METRICS, json_floats([curves[m][i] for m in METRICS]))),
             "curves": {"step": curves["step"].tolist(),
                        **{k: json_floats(curves[k][i]) for k in ("train_loss", "val_loss", "lr")}}}
            for i, run in enumerate(runs)]


def main(argv=None):
    args = flags.parse_args("baselines", argv)
    with distributed.process_group(resolve_device(args.device, args.cudnn_benchmark)) as device:
        try:
            sweep(args, device)
        except KeyboardInterrupt:
            if distributed.is_main():
                results = baseline_dir(args) / "results.jsonl"
                print(f"stopped: {len(read_jsonl(results))} finished runs are saved in {results}; the same command "
                      "again continues with the rest", file=sys.stderr)
            raise


def sweep(args, device):
    """Run the grid's unfinished runs (under torchrun: split across the ranks, rank 0 records them),
    then write best.json and best.png."""
    out = baseline_dir(args)
    results_path = out / "results.jsonl"
    todo = None
    if distributed.is_main():
        check_writable(out)
        drop_torn_last_line(results_path)
        done = {r["name"] for r in read_jsonl(results_path)}
        todo = [run for run in grid(args) if run["name"] not in done]
        print(f"baselines of {out.name}: {len(done)} runs finished, {len(todo)} to go  ({out})")
    todo = distributed.broadcast(todo)
    splits = load_task_splits(task_from_args(args), args.data_dir, device, args.download)
    config = EnvConfig.from_args(args, lr_noise=False)
    mine, world = distributed.shard(todo), distributed.world_size()
    rounds = math.ceil(math.ceil(len(todo) / world) / args.num_envs)  # the same on every rank
    with tqdm(total=len(todo), unit="run", desc="baselines", dynamic_ncols=True,
              disable=not distributed.is_main()) as progress:
        for start in range(0, rounds * args.num_envs, args.num_envs):
            batch = mine[start:start + args.num_envs]
            finished = run_schedules(batch, config, splits, args.seed, device) if batch else []
            for result in (r for results in distributed.all_gather(finished) for r in results):
                if distributed.is_main():
                    append_jsonl(results_path, result)
                progress.update(1)
                progress.set_postfix(last=result["name"], val_loss=result["final_val_loss"])
    if not distributed.is_main():
        return

    results = read_jsonl(results_path)
    best = {"setting": out.name, "args": vars(args)} | {kind: best_of(results, kind) for kind in BASELINE_KINDS}
    save_json(out / "best.json", best)
    table = sorted((r for r in results if r["final_val_loss"] is not None), key=lambda r: r["final_val_loss"])
    print(f"top {min(5, len(table))} of {len(table)} finished runs by final validation loss (lower is better):")
    for r in table[:5]:
        print(f"  {r['name']:<32} final val loss {r['final_val_loss']:.4f}  log {math.log(r['final_val_loss']):+.4f}")
    diverged = [r["name"] for r in results if r["diverged"]]
    if diverged:
        print(f"  diverged: {', '.join(diverged)}")
    for kind in BASELINE_KINDS:
        if best[kind]:
            loss = best[kind]["final_val_loss"]
            print(f"best {kind}: {best[kind]['name']}  final validation loss {loss:.4f} (log {math.log(loss):.4f})")
    curves = {best[k]["name"]: best[k]["curves"] for k in BASELINE_KINDS if best[k]}
    plot_schedules(curves, out / "best.png", f"best baselines: {out.name}")
    print(f"saved {out / 'best.json'} and {out / 'best.png'}")


if __name__ == "__main__":
    run_cli(main)
