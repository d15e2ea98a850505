"""Evaluate a learned schedule against its untrained controller and the best baselines.

    python test.py --dataset fa-mnist --architecture cnn --test-id <experiment-id>

For each of --test-runs seeds, every row trains a child from the same initialization on the same
batches: the learned controller (the --test-schedule checkpoint, acting with its policy's mode, or
sampling as the reference does with --test-deterministic 0), the untrained controller (the run's
initial policy, with the tested checkpoint's observation statistics), and the best step decay and
best constant rate from baselines.py. A controller trained with --initial-lr 0 is tested from each of
1e-2, 1e-3 and 1e-4, against the untrained controller and the best baselines that start at the same
rate; the best baselines overall are rows too. Prints mean +- std and standard errors, and paired
differences; writes results.json and schedules*.png under
runs/<experiment-id>/test/<dataset>_<architecture>[_transfer]_<checkpoint>_<mode>/.
"""
import math

import numpy as np
import torch
from tqdm import tqdm

import flags
from data import dataset_name, load_splits
from environment import EPISODE_METRICS as METRICS, RANDOM_INITIAL_LRS, EnvConfig, VecALRSEnv, run_episode
from plots import plot_schedules
from ppo import CHECKPOINT_FORMAT, ActorCritic, load_controller
from runs import UNTRAINED_CHECKPOINT, baseline_dir, best_of, checkpoint_path, find_run
from schedules import Controller, StepDecay, stack
from utils import UserError, json_floats, load_checkpoint, load_json, read_jsonl, resolve_device, run_cli, save_json

TEST_SEED_OFFSET = 10 ** 6  # test children never share a seed with training children
CURVES = ("train_loss", "val_loss", "lr")


def load_baseline_runs(args):
    """Every finished run of baselines.py for this setting, and its best.json."""
    folder = baseline_dir(args)
    if not (folder / "best.json").exists():
        raise UserError(f"no baseline results at {folder}; run first: python baselines.py --dataset {args.dataset} "
                        f"--architecture {args.architecture} (with the same --num-train-steps, --batch-size, ...)")
    best = load_json(folder / "best.json")
    if not best["step_decay"] or not best["constant"]:
        raise UserError(f"{folder / 'best.json'} has no finished step-decay or constant run (all diverged?)")
    return read_jsonl(folder / "results.jsonl"), best


def make_rows(args, run_dir, state, baseline_runs, best, start_lrs):
    """The rows of the table: (key, label, start lr or None for the overall best, schedule)."""
    mode = "mode" if args.test_deterministic else "sampled"
    agent, normalizer, action_range = load_controller(state)
    action_param = state.get("action_param", "clip")
    untrained_path = run_dir / "checkpoints" / UNTRAINED_CHECKPOINT
    untrained = None
    if untrained_path.exists():
        untrained = ActorCritic(discrete=agent.discrete).eval()
        untrained.load_state_dict(load_checkpoint(untrained_path, required=("agent",))["agent"])
    else:
        print(f"no {UNTRAINED_CHECKPOINT} in this run (trained before it was saved): no untrained row")
    rows, overall = [], {best["step_decay"]["name"], best["constant"]["name"]}
    for lr in start_lrs:
        rows.append((f"learned@{lr:g}", f"learned ({args.test_schedule}, {mode}) from {lr:g}", lr,
                     Controller(agent, normalizer, action_range, action_param, lr, bool(args.test_deterministic))))
        if untrained is not None:
            rows.append((f"untrained@{lr:g}", f"untrained (step 0, {mode}) from {lr:g}", lr,
                         Controller(untrained, normalizer, action_range, action_param, lr,
                                    bool(args.test_deterministic))))
        for kind in ("step_decay", "constant"):
            run = best_of(baseline_runs, kind, initial_lr=lr)
            if run is not None:
                suffix = "  (best overall)" if run["name"] in overall else ""
                rows.append((f"{kind}@{lr:g}", f"best {kind.replace('_', ' ')} from {lr:g}: {run['name']}{suffix}",
                             lr, StepDecay.from_run(run)))
    covered = {label.split(": ")[-1].split("  ")[0] for _, label, _, _ in rows}
    for kind in ("step_decay", "constant"):
        if best[kind]["name"] not in covered:
            rows.append((f"{kind}_best", f"best {kind.replace('_', ' ')} overall: {best[kind]['name']}", None,
                         StepDecay.from_run(best[kind])))
    return rows


def summarize(values):
    """Mean, sample std and standard error of the finite values; diverged runs are counted apart."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    n = len(finite)
    std = float(finite.std(ddof=1)) if n > 1 else (0.0 if n else None)
    return {"mean": float(finite.mean()) if n else None, "std": std,
            "sem": std / math.sqrt(n) if n else None, "runs": n, "diverged": int(len(values) - n)}


def paired_difference(a, b):
    """Mean and standard error of a - b over the seeds where both finished (synced seeds)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return None
    return {"mean": float(diff.mean()), "sem": float(diff.std(ddof=1) / math.sqrt(len(diff))), "runs": len(diff)}


def main(argv=None):
    args = flags.parse_args("test", argv)
    run_dir = find_run(args.runs_dir, args.test_id)
    trained = load_json(run_dir / "args.json")
    state = load_checkpoint(checkpoint_path(run_dir, args.test_schedule), required=("format", "agent", "discrete"))
    if state["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint format {state['format']!r} is not {CHECKPOINT_FORMAT!r}")
    baseline_runs, best = load_baseline_runs(args)
    start_lrs = RANDOM_INITIAL_LRS if trained["initial_lr"] == 0 else (args.initial_lr,)
    rows = make_rows(args, run_dir, state, baseline_runs, best, start_lrs)

    trained_on = f"{dataset_name(trained['dataset'])}/{trained['architecture']}"
    tested_on = f"{dataset_name(args.dataset)}/{args.architecture}"
    transfer = trained_on != tested_on
    mode = "deterministic" if args.test_deterministic else "sampled"
    print(f"controller {args.test_id} ({args.test_schedule}, {mode}), trained on {trained_on}, tested on "
          f"{tested_on}" + ("  [TRANSFER]" if transfer else ""))
    device = resolve_device(args.device)
    splits = load_splits(args.dataset, args.data_dir, args.train_size, args.val_size, device)
    config = EnvConfig.from_args(args, lr_noise=False)
    schedules = [schedule for *_, schedule in rows]
    runs = [{"seed": TEST_SEED_OFFSET + args.seed * 1000 + r} for r in range(args.test_runs)]
    results = {key: {m: [] for m in METRICS} | {"curves": []} for key, *_ in rows}
    checkpoint = args.test_schedule.removesuffix(".pt")
    out = run_dir / "test" / (f"{dataset_name(args.dataset)}_{args.architecture}" + ("_transfer" if transfer else "")
                              + f"_{checkpoint}_{mode}")
    try:
        for run in tqdm(runs, unit="run", desc="test", dynamic_ncols=True):
            torch.manual_seed(run["seed"])  # the sampled actions of a seed are reproducible
            envs = VecALRSEnv(config, splits, [run["seed"]] * len(rows), device, autoreset=False)
            curves = run_episode(envs, stack(schedules), [run["seed"]] * len(rows),
                                 [s.initial_lr for s in schedules])
            for i, (key, *_) in enumerate(rows):
                for metric in METRICS:
                    results[key][metric].append(curves[metric][i])
                results[key]["curves"].append({k: curves[k][i] for k in CURVES})
    except KeyboardInterrupt:
        if results[rows[0][0]]["curves"]:  # report the runs that finished, then stop
            report(args, rows, results, runs, curves["step"], out, trained, trained_on, tested_on, transfer)
        raise
    report(args, rows, results, runs, curves["step"], out, trained, trained_on, tested_on, transfer)


def report(args, rows, results, runs, step, out, trained, trained_on, tested_on, transfer):
    """Print the table of the finished runs and the paired differences; write results.json and figures."""
    finished = len(results[rows[0][0]]["curves"])
    summary = {key: {m: summarize(results[key][m]) for m in METRICS} for key, *_ in rows}
    width = max(len(label) for _, label, *_ in rows) + 2
    print(f"\n{finished} seeds, mean +- sample std (standard error); lower loss is better"
          + (f"  (TRANSFER: trained on {trained_on})" if transfer else ""))
    print(f"{'schedule':<{width}}" + "".join(f"{m:>30}" for m in METRICS))
    for key, label, *_ in rows:
        cells = "".join(f"{'diverged':>30}" if s["mean"] is None else
                        f"{s['mean']:>12.4f} +- {s['std']:.4f} ({s['sem']:.4f})" for s in summary[key].values())
        print(f"{label:<{width}}{cells}")
    comparisons = {}
    for key, label, lr, _ in rows:
        if not key.startswith("learned@"):
            continue
        for other in (f"untrained@{lr:g}", f"step_decay@{lr:g}", f"constant@{lr:g}", "step_decay_best"):
            if other in results:
                comparisons[f"{key} - {other}"] = paired_difference(results[key]["final_val_loss"],
                                                                   results[other]["final_val_loss"])
    print("\npaired differences of final validation loss over the same seeds (negative: learned is better)")
    for name, diff in comparisons.items():
        if diff is not None:
            verdict = ("better" if diff["mean"] < -2 * diff["sem"] else
                       "worse" if diff["mean"] > 2 * diff["sem"] else "within 2 standard errors")
            print(f"  {name:<40} {diff['mean']:+.4f} +- {diff['sem']:.4f}  ({verdict})")
    save_json(out / "results.json", {
        "test_id": args.test_id, "checkpoint": args.test_schedule,
        "mode": "deterministic" if args.test_deterministic else "sampled",
        "trained_on": trained_on, "tested_on": tested_on, "transfer": transfer,
        "seeds": [r["seed"] for r in runs[:finished]],
        "rows": {key: {"label": label, "initial_lr": s.initial_lr} for key, label, _, s in rows},
        "summary": summary, "paired_differences": comparisons,
        "runs": {key: {m: json_floats(results[key][m]) for m in METRICS} for key, *_ in rows},
        "trained_args": trained, "args": vars(args)})
    curves = {key: {"step": step, **{k: np.stack([c[k] for c in results[key]["curves"]]) for k in CURVES}}
              for key, *_ in rows}
    starts = sorted({lr for _, _, lr, _ in rows if lr is not None}, reverse=True)
    for lr in starts:
        name = "schedules.png" if len(starts) == 1 else f"schedules_from_{lr:g}.png"
        shown = {label: curves[key] for key, label, start, _ in rows if start in (lr, None)}
        plot_schedules(shown, out / name, f"{args.test_id} on {tested_on}, from lr {lr:g}"
                       + (" (transfer)" if transfer else "") + f"; mean over {finished} seeds, band: min-max")
    print(f"saved {out / 'results.json'} and the schedules figure(s) in {out}")


if __name__ == "__main__":
    run_cli(main)
