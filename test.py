"""Evaluate a learned schedule against the best step-decay and constant baselines.

    python test.py --dataset fa-mnist --architecture cnn --test-id <experiment-id>

For each of --test-runs seeds, the learned schedule, the best step-decay and the best constant
learning rate (from baselines.py on this dataset and child) train children from the same
initialization on the same batches. Prints a mean +- std table and writes results.json and
schedules.png under runs/<experiment-id>/test/<dataset>_<architecture>[_transfer]/.
"""

import numpy as np
import torch
from tqdm import tqdm

from baselines import baseline_dir, schedule_lr
from environment import EPISODE_METRICS as METRICS, EnvConfig, VecALRSEnv, apply_action, run_episode
from ppo import CHECKPOINT_FORMAT, load_controller
from utils import (UserError, dataset_name, find_run, json_floats, load_checkpoint, load_json, load_splits,
                   parse_args, plot_schedules, resolve_device, run_cli, save_json)

TEST_SEED_OFFSET = 10 ** 6  # test children never share a seed with training children


def checkpoint_path(run_dir, name):
    """checkpoints/best.pt, latest.pt or a named file; a missing one lists those that exist."""
    folder = run_dir / "checkpoints"
    path = folder / (name if name.endswith(".pt") else f"{name}.pt")
    if not path.exists():
        known = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
        raise UserError(f"no checkpoint {path.name} in {folder}; there are: {', '.join(known) or 'none'}")
    return path


def load_baselines(args):
    path = baseline_dir(args) / "best.json"
    if not path.exists():
        raise UserError(f"no baseline results at {path}; run first: python baselines.py --dataset {args.dataset} "
                        f"--architecture {args.architecture} (with the same --num-train-steps, --batch-size, ...)")
    best = load_json(path)
    if not best["step_decay"] or not best["constant"]:
        raise UserError(f"{path} has no finished step-decay or constant run (all diverged?)")
    return best["step_decay"], best["constant"]


def learned_lr(agent, normalizer, action_range, discrete):
    """next_lr function of run_episode for a controller: deterministic action on frozen-normalized obs."""
    def next_lr(obs, lr, step):
        action, _, _ = agent.act(torch.as_tensor(normalizer.observation(obs)), deterministic=True)
        return apply_action(lr, action.numpy(), discrete, action_range)
    return next_lr


def summarize(values):
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return {"mean": float(finite.mean()) if len(finite) else None,
            "std": float(finite.std()) if len(finite) else None, "runs": len(finite),
            "diverged": int(len(values) - len(finite))}


def main():
    args = parse_args()
    if not args.test_id:
        raise UserError("--test-id is required: the experiment id printed by train.py")
    run_dir = find_run(args.runs_dir, args.test_id)
    trained = load_json(run_dir / "args.json")
    state = load_checkpoint(checkpoint_path(run_dir, args.test_schedule), required=("format", "agent", "discrete"))
    if state["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint format {state['format']!r} is not {CHECKPOINT_FORMAT!r}")
    if bool(state["discrete"]) != bool(args.discrete):
        raise UserError(f"controller {args.test_id} was trained with --discrete {int(state['discrete'])}; "
                        f"test it with --discrete {int(state['discrete'])}")
    agent, normalizer, action_range = load_controller(state)
    step_decay, constant = load_baselines(args)

    trained_on = f"{dataset_name(trained['dataset'])}/{trained['architecture']}"
    tested_on = f"{dataset_name(args.dataset)}/{args.architecture}"
    transfer = trained_on != tested_on
    print(f"controller {args.test_id} ({args.test_schedule}), trained on {trained_on}, tested on {tested_on}"
          + ("  [TRANSFER]" if transfer else ""))
    device = resolve_device(args.device)
    splits = load_splits(args.dataset, args.data_dir, args.train_size, args.val_size, device)
    config = EnvConfig.from_args(args, lr_noise=False)
    methods = {"learned": None, f"step decay ({step_decay['name']})": step_decay,
               f"constant ({constant['name']})": constant}
    policy = learned_lr(agent, normalizer, action_range, bool(args.discrete))

    def next_lr(obs, lr, step):
        return np.concatenate([policy(obs[:1], lr[:1], step),
                               [schedule_lr(run, step) for run in (step_decay, constant)]])

    runs = [{"seed": TEST_SEED_OFFSET + args.seed * 1000 + r} for r in range(args.test_runs)]
    results = {name: {m: [] for m in METRICS} | {"curves": []} for name in methods}
    out = run_dir / "test" / (f"{dataset_name(args.dataset)}_{args.architecture}" + ("_transfer" if transfer else ""))
    try:
        for run in tqdm(runs, unit="run", desc="test", dynamic_ncols=True):
            envs = VecALRSEnv(config, splits, [run["seed"]] * 3, device, autoreset=False)
            initial = [args.initial_lr, step_decay["initial_lr"], constant["initial_lr"]]
            curves = run_episode(envs, next_lr, [run["seed"]] * 3, initial)
            for i, name in enumerate(methods):
                for metric in METRICS:
                    results[name][metric].append(curves[metric][i])
                results[name]["curves"].append({k: curves[k][i] for k in ("train_loss", "val_loss", "lr")})
    except KeyboardInterrupt:
        if results["learned"]["curves"]:  # report the runs that finished, then stop
            report(args, results, runs, curves["step"], out, trained_on, tested_on, transfer)
        raise
    report(args, results, runs, curves["step"], out, trained_on, tested_on, transfer)


def report(args, results, runs, step, out, trained_on, tested_on, transfer):
    """Print the mean +- std table of the finished runs; write results.json and schedules.png."""
    finished = len(results["learned"]["curves"])
    summary = {name: {m: summarize(r[m]) for m in METRICS} for name, r in results.items()}
    width = max(map(len, results)) + 2
    print(f"\n{finished} runs, mean +- std" + (f"  (TRANSFER: trained on {trained_on})" if transfer else ""))
    print(f"{'method':<{width}}" + "".join(f"{m:>22}" for m in METRICS))
    for name, stats in summary.items():
        cells = "".join(f"{'diverged':>22}" if s["mean"] is None else f"{s['mean']:>13.4f} +- {s['std']:.4f}"
                        for s in stats.values())
        print(f"{name:<{width}}{cells}")
    save_json(out / "results.json", {
        "test_id": args.test_id, "checkpoint": args.test_schedule, "trained_on": trained_on, "tested_on": tested_on,
        "transfer": transfer, "seeds": [r["seed"] for r in runs[:finished]], "summary": summary,
        "runs": {name: {m: json_floats(r[m]) for m in METRICS}
                 for name, r in results.items()}, "args": vars(args)})
    curves = {name: {"step": step, **{k: np.stack([c[k] for c in r["curves"]]) for k in ("train_loss", "val_loss", "lr")}}
              for name, r in results.items()}
    plot_schedules(curves, out / "schedules.png", f"{args.test_id} on {tested_on}" + (" (transfer)" if transfer else ""))
    print(f"saved {out / 'results.json'} and {out / 'schedules.png'}")

if __name__ == "__main__":
    run_cli(main)
