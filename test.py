"""Evaluate a learned schedule against its untrained controller and the best baselines.

    python test.py --test-id <experiment-id>
    python test.py --test-id <experiment-id> --dataset mnist --architecture mlp   # transfer

For each of --test-runs seeds, every row trains a child from the same initialization on the same
batches: the learned controller (the --test-schedule checkpoint, acting with its policy's mode, or
sampling as the reference does with --test-deterministic 0), the untrained controller (the run's
initial policy, with the tested checkpoint's observation statistics), and the best step decay,
constant rate and cosine annealing from baselines.py. A controller trained with --initial-lr 0 is
tested from each of 1e-2, 1e-3 and 1e-4, against the untrained controller and the best baselines that start at the same
rate; the best baselines overall are rows too. Prints mean +- std and standard errors, and paired
differences; writes results.json and schedules*.png under
runs/<experiment-id>/test/<dataset>_<architecture>[_transfer]_<checkpoint>_<mode>/.
"""
import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

import distributed
import flags
from data import dataset_name
from tasks import VARIANT_KEYS, load_task_splits, parse_task, task_from_args
from alrs.controller import controller_features, load_controller, read_controller_checkpoint, start_lrs
from environment import EPISODE_METRICS as METRICS, EnvConfig, run_synced
from plots import plot_schedules
from alrs.policy import ActorCritic
from runs import SEED_STRIDE, UNTRAINED_CHECKPOINT, baseline_dir, best_of, check_writable, checkpoint_path, find_run
from schedules import BASELINE_KINDS, baseline_schedule, replay_schedules
from stats import paired_difference, summarize, verdict
from utils import UserError, json_floats, load_checkpoint, load_json, read_jsonl, resolve_device, run_cli, save_json

TEST_SEED_OFFSET = 10 ** 6  # test children never share a seed with training children
CURVES = ("train_loss", "val_loss", "lr")
CELL = 17  # characters per table column: the lines stay under 120 characters
BEST_OVERALL = "*"  # marks the row that holds a kind's best baseline from any initial rate
INHERITED = ("dataset", "architecture", "batch_size", "update_freq", "num_train_steps", "initial_lr", "data_dir",
             "train_size", "val_size", *VARIANT_KEYS, "precision")  # taken from the trained run unless given


def load_baseline_runs(args):
    """Every finished run of baselines.py for this setting, and its best.json."""
    folder = baseline_dir(args)
    if not (folder / "best.json").exists():
        raise UserError(f"no baseline results at {folder}; run first: " + flags.baselines_command(args))
    best = load_json(folder / "best.json")
    if missing := [kind for kind in BASELINE_KINDS if kind not in best]:
        raise UserError(f"{folder / 'best.json'} predates the {', '.join(missing)} baselines; rerun (it keeps the "
                        "finished runs): " + flags.baselines_command(args))
    if empty := [kind for kind in BASELINE_KINDS if not best[kind]]:
        raise UserError(f"{folder / 'best.json'} has no finished {', '.join(empty)} run (all diverged?)")
    return read_jsonl(folder / "results.jsonl"), best


@dataclass
class Row:
    """One row of the table: a schedule, the rate it starts from (None: the best baseline overall)
    and what it is, for the printed label and results.json."""
    key: str
    label: str
    start: float | None
    schedule: object
    config: dict


def load_policies(run_dir, state):
    """The tested controller and, if the run saved it, its initial policy (else None), loaded once
    for every start rate."""
    controller = load_controller(state)
    untrained = None
    untrained_path = run_dir / "checkpoints" / UNTRAINED_CHECKPOINT
    if untrained_path.exists():
        untrained = ActorCritic(controller.agent.actor[0].in_features, discrete=controller.agent.discrete).eval()
        untrained.load_state_dict(load_checkpoint(untrained_path, required=("agent",))["agent"])
    else:
        print(f"no {UNTRAINED_CHECKPOINT} in this run (trained before it was saved): no untrained rows")
    return controller, untrained


def initial_policy_label(started_from, mode):
    """The label of the run's step-0 checkpoint: the untrained policy, or, for a run started with
    --init-controller (``started_from``, the file), the controller it started from."""
    return f"initial ({Path(started_from).name}, step 0, {mode})" if started_from else f"untrained (step 0, {mode})"


def controller_rows(args, policies, lr, started_from):
    """The learned controller and, where there is one, its initial policy, from rate ``lr``."""
    controller, untrained = policies
    controller = replace(controller, deterministic=bool(args.test_deterministic))
    mode = "mode" if args.test_deterministic else "sampled"
    config = {"discrete": controller.agent.discrete, "action_range": controller.action_range,
              "action_param": controller.action_param, "deterministic": controller.deterministic, "initial_lr": lr}
    rows = [Row(f"learned@{lr:g}", f"learned ({args.test_schedule}, {mode}) from {lr:g}", lr,
                controller.starting_at(lr),
                {"checkpoint": args.test_schedule, **config})]
    if untrained is not None:
        rows.append(Row(f"untrained@{lr:g}", f"{initial_policy_label(started_from, mode)} from {lr:g}", lr,
                        controller.starting_at(lr, agent=untrained),
                        {"checkpoint": UNTRAINED_CHECKPOINT, **config}))
    return rows


def make_rows(args, run_dir, trained, state, baseline_runs, best, starts):
    """Per start rate: learned, untrained, the best step decay, constant rate and cosine annealing from
    that rate; then the best baselines overall, where no row holds them yet."""
    policies = load_policies(run_dir, state)
    rows = []
    for lr in starts:
        rows += controller_rows(args, policies, lr, trained.get("init_controller"))
        for kind in BASELINE_KINDS:
            run = best_of(baseline_runs, kind, initial_lr=lr)
            if run is not None:
                marker = f" {BEST_OVERALL}" if run["name"] == best[kind]["name"] else ""
                rows.append(Row(f"{kind}@{lr:g}", f"best {kind.replace('_', ' ')} from {lr:g}{decay(run)}{marker}",
                                lr, baseline_schedule(run, args.num_train_steps), baseline_config(run)))
    for kind in BASELINE_KINDS:
        if not any(row.config.get("name") == best[kind]["name"] for row in rows):
            run = best[kind]
            rows.append(Row(f"{kind}_best", f"best {kind.replace('_', ' ')} overall: from {run['initial_lr']:g}"
                            f"{decay(run)}", None, baseline_schedule(run, args.num_train_steps), baseline_config(run)))
    return rows


def decay(run):
    """A step-decay run's factor and period for its label (nothing for the other kinds)."""
    return f" (x{run['discount_factor']:g} every {run['discount_step']})" if run["kind"] == "step_decay" else ""


def baseline_config(run):
    return {key: run[key] for key in ("name", "kind", "initial_lr", "discount_step", "discount_factor") if key in run}


def settings(args, argv, trained):
    """test.py's settings: the trained run's child-training settings (args.json), except the flags
    given on the command line, so a plain --test-id reproduces the training setting and a transfer
    test needs only --dataset and --architecture."""
    given = flags.explicit_flags("test", argv)
    for name in INHERITED:
        if name not in given and name in trained:
            setattr(args, name, trained[name])
    return args


def cell(stats):
    """A table cell: mean +- sample std, the mean alone for one seed, or 'diverged'."""
    if stats["mean"] is None:
        text = "diverged"
    elif stats["std"] is None:
        text = f"{stats['mean']:.4f}"
    else:
        text = f"{stats['mean']:.4f} +- {stats['std']:.4f}"
    return f"{text:>{CELL}}"


def main(argv=None):
    args = flags.parse_args("test", argv)
    with distributed.process_group(resolve_device(args.device, args.cudnn_benchmark)) as device:
        evaluate(args, argv, device)


def evaluate(args, argv, device):
    """Test every row on --test-runs seeds (under torchrun: the seeds split across the ranks, rank 0
    reports), with the same numbers either way."""
    run_dir = find_run(args.runs_dir, args.test_id)
    trained = load_json(run_dir / "args.json")
    args = settings(args, argv, trained)
    state = read_controller_checkpoint(checkpoint_path(run_dir, args.test_schedule))
    baseline_runs, best = load_baseline_runs(args)
    rows = make_rows(args, run_dir, trained, state, baseline_runs, best, start_lrs(args.initial_lr))

    trained_labels = trained_settings(trained)
    trained_on = ", ".join(trained_labels)
    tested_on = setting_label(task_from_args(args))
    transfer = tested_on not in trained_labels
    mode = "deterministic" if args.test_deterministic else "sampled"
    checkpoint = args.test_schedule.removesuffix(".pt")
    out = run_dir / "test" / (tested_on.replace("/", "_") + ("_transfer" if transfer else "")
                              + f"_{checkpoint}_{mode}")
    if distributed.is_main():
        check_writable(out)
    print(f"controller {args.test_id} ({args.test_schedule}, {mode}), trained on {trained_on}, tested on "
          f"{tested_on}" + ("  [TRANSFER]" if transfer else ""))
    splits = load_task_splits(task_from_args(args), args.data_dir, device, args.download)
    config = EnvConfig.from_args(args, lr_noise=False, features=controller_features(state))
    runs = [{"seed": TEST_SEED_OFFSET + args.seed * SEED_STRIDE + r} for r in range(args.test_runs)]
    finished = {}  # run index -> the curves and metrics of every row on that seed
    tell = lambda shown: report(args, shown, [finished[i] for i in sorted(finished)], runs, out, trained, trained_on,
                                tested_on, transfer)
    run_all = lambda schedules_of, desc: run_seeds(runs, schedules_of, config, splits, device, desc)
    try:
        finished = run_all(lambda index: [row.schedule for row in rows], "test")
    except KeyboardInterrupt as stop:
        if stop.args and distributed.world_size() == 1:  # report the runs that finished, then stop
            finished = stop.args[0]
            tell(rows)
        raise
    if len(runs) > 1:  # the replay: each seed runs the other seeds' geometric-mean learned schedule
        replays = replay_rows(args, rows, [finished[i] for i in range(len(runs))])
        try:
            again = run_all(lambda index: [row.schedule[index] for row in replays], "replay")
        except KeyboardInterrupt:
            if distributed.is_main():
                tell(rows)  # every seed finished, the replay did not
            raise
        finished = {index: join_results(finished[index], again[index]) for index in finished}
        rows = rows + replays
    if distributed.is_main():
        tell(rows)


def run_seeds(runs, schedules_of, config, splits, device, desc):
    """run_synced on every seed of ``runs`` with the schedules ``schedules_of(run index)`` (under
    torchrun split across the ranks); {run index: results}. Ctrl-C raises KeyboardInterrupt carrying
    the seeds that finished."""
    finished, mine = {}, distributed.shard(range(len(runs)))
    try:
        with tqdm(total=len(mine) * config.num_train_steps, unit="step", desc=desc, dynamic_ncols=True,
                  disable=not distributed.is_main()) as progress:  # in child steps: a seed can take minutes
            for index in mine:
                schedules = schedules_of(index)
                progress.set_postfix(seed=f"{index + 1}/{len(runs)}", children=len(schedules))
                finished[index] = run_synced(schedules, config, splits, runs[index]["seed"], device, progress.update)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(finished) if finished else KeyboardInterrupt() from None
    return {index: curves for part in distributed.all_gather(finished) for index, curves in part.items()}


def replay_rows(args, rows, seeds):
    """The control for feedback: for each learned row, its schedule replayed open loop, on each seed the
    geometric mean over the other seeds of the rates it chose (a row's ``schedule`` is a list by seed)."""
    replays = []
    for i, row in enumerate(rows):
        if row.key.startswith("learned@"):
            lr_curves = np.stack([curves["lr"][i] for curves in seeds])
            replays.append(Row(f"replay@{row.start:g}", f"replay of learned from {row.start:g} (open loop)", row.start,
                               replay_schedules(row.start, lr_curves, args.update_freq),
                               {"kind": "replay", "of": row.key, "initial_lr": row.start}))
    return replays


def join_results(first, second):
    """run_episode's results of two sets of rows on the same seed, as one (rows of ``first`` first)."""
    return {key: value if key == "step" else np.concatenate([value, second[key]]) for key, value in first.items()}


def setting_label(task):
    """dataset/child and the variant of a task, as test.py names what a controller was trained or tested on."""
    variant = "".join(f"_{key}{getattr(task, key):g}" for key in VARIANT_KEYS
                      if getattr(task, key) != getattr(type(task), key))
    return f"{dataset_name(task.dataset)}/{task.architecture}{variant}"


def trained_settings(trained):
    """The setting labels of the tasks a run (its args.json) trained on."""
    base = task_from_args(argparse.Namespace(**trained))
    return sorted({setting_label(parse_task(spec, base)) for spec in trained.get("task") or ()} or {setting_label(base)})


def report(args, rows, seeds, runs, out, trained, trained_on, tested_on, transfer):
    """Print the table of the finished seeds (run_episode's results, in seed order) and the paired
    differences; write results.json and figures."""
    finished, step = len(seeds), seeds[0]["step"]
    results = {row.key: {m: [curves[m][i] for curves in seeds] for m in METRICS}
               | {"curves": [{k: curves[k][i] for k in CURVES} for curves in seeds]} for i, row in enumerate(rows)}
    summary = {row.key: {m: summarize(results[row.key][m]) for m in METRICS} for row in rows}
    width = max(len(row.label) for row in rows) + 2
    spread = ("mean +- sample std (standard errors in results.json)" if finished > 1
              else "no spread from one seed (--test-runs)")
    print(f"\n{finished} seed{'s' * (finished > 1)}, {spread}; lower loss is better"
          + (f"  (TRANSFER: trained on {trained_on})" if transfer else ""))
    print(f"{'schedule':<{width}}" + "".join(f"{m.replace('_', ' '):>{CELL}}" for m in METRICS))
    for row in rows:
        print(f"{row.label:<{width}}" + "".join(cell(s) for s in summary[row.key].values()))
    if any(row.label.endswith(BEST_OVERALL) for row in rows):
        print(f"{BEST_OVERALL} the best of its kind from any initial rate (baselines.py's best.json)")
    comparisons = {}
    for row in rows:
        if not row.key.startswith("learned@"):
            continue
        for other in (f"untrained@{row.start:g}", f"replay@{row.start:g}",
                      *(f"{kind}@{row.start:g}" for kind in BASELINE_KINDS),
                      "step_decay_best", "cosine_best"):
            if other in results:
                comparisons[f"{row.key} - {other}"] = paired_difference(results[row.key]["final_val_loss"],
                                                                       results[other]["final_val_loss"])
    if not any(comparisons.values()):
        print("\nno paired differences: they need 2 or more seeds on which both rows finished")
    else:
        print("\npaired differences of final validation loss over the same seeds (negative: learned is better)")
    for name, diff in comparisons.items():
        if diff is not None:
            print(f"  {name:<40} {diff['mean']:+.4f} +- {diff['sem']:.4f}  ({verdict(diff)})")
    save_json(out / "results.json", {
        "test_id": args.test_id, "checkpoint": args.test_schedule,
        "mode": "deterministic" if args.test_deterministic else "sampled",
        "trained_on": trained_on, "tested_on": tested_on, "transfer": transfer,
        "seeds": [r["seed"] for r in runs[:finished]],
        "rows": {row.key: {"label": row.label, "initial_lr": row.config["initial_lr"], "config": row.config}
                 for row in rows},
        "summary": summary, "paired_differences": comparisons,
        "runs": {row.key: {m: json_floats(results[row.key][m]) for m in METRICS} for row in rows},
        "trained_args": trained, "args": vars(args)})
    curves = {row.key: {"step": step, **{k: np.stack([c[k] for c in results[row.key]["curves"]]) for k in CURVES}}
              for row in rows}
    starts = sorted({row.start for row in rows if row.start is not None}, reverse=True)
    for lr in starts:
        name = "schedules.png" if len(starts) == 1 else f"schedules_from_{lr:g}.png"
        shown = {row.label: curves[row.key] for row in rows if row.start in (lr, None)}
        plot_schedules(shown, out / name, f"{args.test_id} on {tested_on}, from lr {lr:g}"
                       + (" (transfer)" if transfer else "") + f"; mean over {finished} seeds")
    print(f"saved {out / 'results.json'} and the schedules figure(s) in {out}")


if __name__ == "__main__":
    run_cli(main)
