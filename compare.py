"""Benchmark a trained controller against what users pick instead, on tasks it never trained on.

    python compare.py --data-dir data                         # the shipped controller on the 4 held-out tasks
    python compare.py --data-dir data --methods baselines     # the baselines alone (computed once)
    python compare.py --data-dir data --controller runs/<id>/checkpoints/best.pt   # adds only its rows

Every method trains the task's child in a plain PyTorch loop, as a user would write it: Adam with
default betas and one scheduler call per step, for the controller (scheduler.ALRSScheduler), its
open-loop replay, a constant rate, step decay, cosine, OneCycle and ReduceLROnPlateau, each from
every start rate; schedule-free AdamW at each start rate; Prodigy; with several tasks, the pooled
replay (the controller's schedule averaged over the other tasks). On a seed every method starts
from the same initialization and trains on the same batches, so differences are paired. Each
finished run is a line of <out>/runs.jsonl, and a rerun skips it. The report (results.md, printed;
summary.json; compare.png) covers every finished run of the tasks and seeds asked for.
docs/compare.md describes the methods and the output.
"""
import hashlib
import importlib.util
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler
from tqdm import tqdm

import flags
from alrs.controller import read_controller_checkpoint
from alrs.scheduler import PRETRAINED_DIR, ALRSScheduler
from alrs.validation import evaluation_mode, predict
from children import to_float
from data import DATASETS
from models import build_model
from optimizers import SCHEDULEFREE_WARMUP, OptimizerSpec
from plots import _pyplot
from schedules import pooled_replay, replay_schedules
import stats
from stats import summarize, verdict
from tasks import Task, load_task_splits, parse_task
from utils import (UserError, append_jsonl, atomic_write, drop_torn_last_line, json_floats, read_jsonl,
                   resolve_device, run_cli, save_json)

UPDATE_FREQ = 10  # steps between the controller's actions, and between ReduceLROnPlateau's checks
BASE_TASK = Task(dataset="fa-mnist", architecture="mlp", batch_size=128, num_train_steps=500, train_size=20000,
                 val_size=2000)  # the shipped controller's training task; --task keys left out take its values
HELD_OUT_TASKS = ("architecture=cnn",  # an unseen child (LeNet-5)
                  "label_noise=0.5",  # an unseen variant of the dataset
                  "num_train_steps=2000",  # a 4x longer horizon
                  "batch_size=32")  # another batch size
START_LRS = (1e-2, 1e-3, 1e-4)
BAR_START = 1e-3  # the bar's start: the controller from the default rate, untuned
KINDS = ("alrs", "replay", "pooled_replay", "constant", "step_decay", "cosine", "onecycle", "plateau", "schedulefree",
         "prodigy")
CONTROLLED = KINDS[:3]  # the controller's rows, one per controller
BASELINES = KINDS[3:]
PACKAGES = {"schedulefree": "schedulefree", "prodigy": "prodigyopt"}  # optional, imported only when asked for
STEP_DECAY_GRID = ((10, 0.9), (10, 0.5), (4, 0.9), (4, 0.5))  # (discount every total/k steps, factor)
PLATEAU_PATIENCE = 4  # torch's count: the 5th check without a new best (50 steps) halves the rate
METRICS = ("final_val_loss", "test_loss", "test_accuracy")  # of each run
CHANCE_FRACTION = 0.95  # a final validation loss above this fraction of ln(classes) is "at chance"
PRETRAINED = PRETRAINED_DIR / "fa-mnist_mlp_stable.pt"


def lr_text(lr):
    """A rate as the method names write it: 1e-3, 3e-4, 2.5e-2."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


@dataclass(frozen=True)
class Method:
    """How one row of the benchmark sets the rate, and from which start."""
    kind: str  # one of KINDS
    lr: float  # the start rate (Prodigy: its multiplier, 1)
    controller: str | None = None  # CONTROLLED kinds: the checkpoint path (its file stem names the row)
    decay_every: int | None = None  # step decay: discount every total/decay_every steps ...
    decay_factor: float | None = None  # ... by this factor

    @property
    def name(self):
        """Stable row names (the keys of runs.jsonl): alrs:<controller>@1e-3, step_decay/10x0.5@1e-3, prodigy."""
        if self.kind == "prodigy":
            return "prodigy"
        if self.kind in CONTROLLED:
            return f"{self.kind}:{Path(self.controller).stem}@{lr_text(self.lr)}"
        if self.kind == "step_decay":
            return f"step_decay/{self.decay_every}x{self.decay_factor:g}@{lr_text(self.lr)}"
        return f"{self.kind}@{lr_text(self.lr)}"


def make_methods(kinds, controllers, lrs):
    """Every row asked for: per start rate, each controller and its replay, then the baselines; Prodigy once."""
    methods = []
    for lr in lrs:
        for kind in (k for k in KINDS if k in kinds and k != "prodigy"):
            if kind in CONTROLLED:
                methods += [Method(kind, lr, path) for path in controllers]
            elif kind == "step_decay":
                methods += [Method(kind, lr, decay_every=k, decay_factor=f) for k, f in STEP_DECAY_GRID]
            else:
                methods.append(Method(kind, lr))
    if "prodigy" in kinds:
        methods.append(Method("prodigy", 1.0))
    return methods


# ----------------------------------------------------------------------------- one run: a plain PyTorch loop

@dataclass
class TaskData:
    """A task's splits on the device, and its validation and test images already as floats."""
    splits: object
    val: tuple
    test: tuple


def load_data(task, data_dir, device):
    """The task's TaskData; a batch larger than the training split (no batch at all) is a UserError."""
    splits = load_task_splits(task, data_dir, device)
    if task.batch_size > len(splits.train_y):
        raise UserError(f"task {task.name}: batch_size {task.batch_size} exceeds its {len(splits.train_y)} "
                        "training images")
    return TaskData(splits, (to_float(splits.val_x), splits.val_y), (to_float(splits.test_x), splits.test_y))


def batches(num_train, batch_size, seed):
    """Index batches of ``seed``: shuffled epochs drawn by a generator of that seed, each epoch's last
    partial batch dropped; every method on the seed trains on the same batches in the same order."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = num_train // batch_size
    while True:
        yield from torch.randperm(num_train, generator=generator)[:per_epoch * batch_size].view(per_epoch, -1)


def make_alrs(optimizer, model, path, val_data, total_steps):
    """The controller as a user builds it; ``total_steps``, the run's length, is what a controller that
    observes the fraction of the run done needs (cosine's T_max)."""
    return ALRSScheduler(optimizer, model, path, val_data, update_freq=UPDATE_FREQ, total_steps=total_steps)


def make_optimizer(method, task, model, total_steps):
    """The task's optimizer (Adam with default betas unless the task says otherwise), except for the two
    methods that are optimizers of their own: schedule-free AdamW and Prodigy (with the task's weight
    decay)."""
    if method.kind == "schedulefree":
        return OptimizerSpec("schedulefree", task.weight_decay).build(model.parameters(), method.lr, total_steps)
    if method.kind == "prodigy":
        import prodigyopt
        return prodigyopt.Prodigy(model.parameters(), lr=method.lr, weight_decay=task.weight_decay)
    return OptimizerSpec.of(task).build(model.parameters(), method.lr, total_steps)


def make_scheduler(method, optimizer, model, val_data, total_steps, replay=None):
    """The method's scheduler, stepped as torch.optim.lr_scheduler's are (None: the rate stays).
    OneCycle leaves Adam's betas alone (cycle_momentum=False), so only the rate differs between rows."""
    if method.kind == "alrs":
        return make_alrs(optimizer, model, method.controller, val_data, total_steps)
    if method.kind in ("replay", "pooled_replay"):  # the rates of ``replay`` (a schedules.Replay), block by block
        return lr_scheduler.LambdaLR(optimizer, lambda step: replay.next_lr(None, None, step) / method.lr)
    if method.kind == "step_decay":
        return lr_scheduler.StepLR(optimizer, max(1, total_steps // method.decay_every), method.decay_factor)
    if method.kind in ("cosine", "prodigy"):
        return lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    if method.kind == "onecycle":
        return lr_scheduler.OneCycleLR(optimizer, method.lr, total_steps=total_steps, cycle_momentum=False)
    if method.kind == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=PLATEAU_PATIENCE)
    return None


def current_lr(optimizer):
    """The rate the next step takes: the group's lr, times Prodigy's estimate d (its lr multiplies d).
    Schedule-free AdamW's is its base rate (its 5% warmup not shown)."""
    group = optimizer.param_groups[0]
    return group["lr"] * group.get("d", 1.0)


def evaluate(model, optimizer, images, labels):
    """Mean cross-entropy and accuracy over float images (alrs.validation.predict, at the optimizer's
    evaluation weights)."""
    with evaluation_mode(optimizer):
        logits = predict(model, images)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def train_run(method, task, data, seed, device, replay=None):
    """Train the task's child with ``method`` on ``seed``; its record for runs.jsonl. The learning-rate
    curve is run_episode's: entry 0 the start rate, entry t the rate at the first step of block t-1,
    NaN after a non-finite loss, which ends the run with NaN metrics and ``diverged``."""
    started, splits, total = time.perf_counter(), data.splits, task.num_train_steps
    torch.manual_seed(seed)  # the same initialization for every method on this seed
    model = build_model(task.architecture, splits.in_channels, splits.image_size, splits.num_classes).to(device)
    optimizer = make_optimizer(method, task, model, total)
    lrs = [current_lr(optimizer)]
    scheduler = make_scheduler(method, optimizer, model, data.val, total, replay)
    diverged = False
    for step, batch in zip(range(total), batches(len(splits.train_y), task.batch_size, seed)):
        if step % UPDATE_FREQ == 0:
            lrs.append(current_lr(optimizer))
        batch = batch.to(device)
        loss = F.cross_entropy(model(to_float(splits.train_x[batch])), splits.train_y[batch])
        if not math.isfinite(loss.item()):
            diverged = True
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if isinstance(scheduler, ALRSScheduler):
            scheduler.step(loss)
        elif isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            if (step + 1) % UPDATE_FREQ == 0:
                scheduler.step(evaluate(model, optimizer, *data.val)[0])
        elif scheduler is not None:
            scheduler.step()
    val_loss = math.nan if diverged else evaluate(model, optimizer, *data.val)[0]
    diverged = not math.isfinite(val_loss)
    test_loss, test_accuracy = (math.nan, math.nan) if diverged else evaluate(model, optimizer, *data.test)
    lrs += [math.nan] * (total // UPDATE_FREQ + 1 - len(lrs))
    return {"task": task.name, "method": method.name, "seed": seed, "kind": method.kind, "initial_lr": method.lr,
            **dict(zip(METRICS, json_floats([val_loss, test_loss, test_accuracy]))),
            "diverged": diverged, "num_classes": splits.num_classes, "lr": json_floats(lrs),
            "seconds": round(time.perf_counter() - started, 2)}


def replay_schedule(alrs_runs, seed, initial_lr):
    """The replay of ``seed``: the geometric mean, block by block, of the rates the controller chose on
    the other seeds of ``alrs_runs`` ({seed: record}), a schedules.Replay; and those seeds."""
    seeds = sorted(alrs_runs)
    curves = np.array([alrs_runs[s]["lr"] for s in seeds], dtype=float)  # None (after a divergence): NaN
    return replay_schedules(initial_lr, curves, UPDATE_FREQ)[seeds.index(seed)], [s for s in seeds if s != seed]


# ----------------------------------------------------------------------------- statistics (pure functions)

def paired_difference(a, b):
    """stats.paired_difference of two methods' {seed: value} over the seeds both ran."""
    common = [s for s in a if s in b]
    return stats.paired_difference([a[s] for s in common], [b[s] for s in common])


def losses(runs):
    """{seed: final validation loss} of a method's runs ({seed: record}), NaN for a diverged run."""
    return {seed: math.nan if r["final_val_loss"] is None else r["final_val_loss"] for seed, r in runs.items()}


def failed(record):
    """Diverged, or ended at chance (the final validation loss above CHANCE_FRACTION of ln(classes))."""
    return record["diverged"] or record["final_val_loss"] >= CHANCE_FRACTION * math.log(record["num_classes"])


def best_of(summaries, names):
    """The name among ``names`` with the lowest mean final validation loss (None: none finished)."""
    done = [n for n in names if n in summaries and summaries[n]["final_val_loss"]["mean"] is not None]
    return min(done, key=lambda n: summaries[n]["final_val_loss"]["mean"], default=None)


def picks(summaries):
    """The rows picked on these same seeds by mean final validation loss: per start rate the best step
    decay of its grid; the best-of-grid cosine and schedule-free AdamW over the start rates."""
    of_kind = lambda kind, lr=None: [n for n, s in summaries.items()
                                     if s["kind"] == kind and (lr is None or s["initial_lr"] == lr)]
    decay_starts = sorted({s["initial_lr"] for s in summaries.values() if s["kind"] == "step_decay"}, reverse=True)
    chosen = {f"step_decay@{lr_text(lr)}": best_of(summaries, of_kind("step_decay", lr)) for lr in decay_starts}
    chosen.update(cosine_best=best_of(summaries, of_kind("cosine")),
                  schedulefree_best=best_of(summaries, of_kind("schedulefree")))
    return {key: name for key, name in chosen.items() if name is not None}


def comparisons(label, lr, chosen):
    """The rows the controller ``label`` from ``lr`` is compared with: {what: row name}; the same start
    rate's, then the best over the start rates."""
    start = lr_text(lr)
    return {"replay": f"replay:{label}@{start}", "pooled_replay": f"pooled_replay:{label}@{start}",
            "constant": f"constant@{start}",
            "step_decay": chosen.get(f"step_decay@{start}"), "cosine": f"cosine@{start}",
            "onecycle": f"onecycle@{start}", "plateau": f"plateau@{start}",
            "cosine_best": chosen.get("cosine_best"), "schedulefree_best": chosen.get("schedulefree_best")}


BEST_LABELS = {"cosine_best": "best-of-grid cosine: ", "schedulefree_best": "schedule-free AdamW, best lr: "}


BAR_CHECKS = {"no_failure": "no chance/divergence where constant has none", "beats_constant": "beats constant",
              "beats_cosine": "beats cosine", "beats_plateau": "beats ReduceLROnPlateau",
              "near_best_cosine": "within 2% of best-of-grid cosine", "beats_replay": "beats its replay by > 2 SE"}


def bar_checks(runs, summaries, chosen, label):
    """Issue 16's bar on one task for controller ``label`` from BAR_START: each check True, False or
    None (a row it needs has no paired runs). ``runs``: {method: {seed: record}}."""
    start = lr_text(BAR_START)
    alrs = runs.get(f"alrs:{label}@{start}", {})
    paired = lambda name: paired_difference(losses(alrs), losses(runs.get(name, {})))
    below = lambda diff, margin: None if diff is None else diff["mean"] < -margin * diff["sem"]
    constant = runs.get(f"constant@{start}", {})
    common = [s for s in alrs if s in constant]
    mean = lambda name: summaries.get(name, {}).get("final_val_loss", {}).get("mean")
    best_cosine = mean(chosen.get("cosine_best"))
    return {"no_failure": not any(failed(alrs[s]) and not failed(constant[s]) for s in common) if common else None,
            **{f"beats_{kind}": below(paired(f"{kind}@{start}"), 0) for kind in ("constant", "cosine", "plateau")},
            "near_best_cosine": (None if mean(f"alrs:{label}@{start}") is None or best_cosine is None
                                 else mean(f"alrs:{label}@{start}") <= 1.02 * best_cosine),
            "beats_replay": below(paired(f"replay:{label}@{start}"), 2)}


def bar_verdict(per_task):
    """The bar over the tasks ({task: bar_checks}): every task passes its first five checks and the
    replay check holds on at least half of them. False once that cannot hold, None while undecided."""
    task_checks = [value for checks in per_task.values() for key, value in checks.items() if key != "beats_replay"]
    replay = [checks["beats_replay"] for checks in per_task.values()]
    if False in task_checks or (len(replay) - replay.count(False)) * 2 < len(replay):
        return False
    return None if None in task_checks or None in replay else True


# ----------------------------------------------------------------------------- the report

def collect(records, task_names, seeds):
    """{task: {method: {seed: record}}} of the finished runs of these tasks and seeds (the last record wins)."""
    runs = {name: {} for name in task_names}
    for r in records:
        if r["task"] in runs and r["seed"] in seeds:
            runs[r["task"]].setdefault(r["method"], {})[r["seed"]] = r
    return runs


def summarize_task(runs):
    """Per method: its kind and start, mean ± SE of the metrics, failures, and the geometric-mean rate per block."""
    summaries = {}
    for name, by_seed in runs.items():
        records = [by_seed[s] for s in sorted(by_seed)]
        curves = np.array([r["lr"] for r in records], dtype=float)
        with np.errstate(all="ignore"):
            log_mean = np.log(curves).mean(0)  # NaN after a divergence, as the run
        summaries[name] = {"kind": records[0]["kind"], "initial_lr": records[0]["initial_lr"],
                           **{m: summarize(r[m] if r[m] is not None else math.nan for r in records)
                              for m in METRICS},
                           "failed": sum(map(failed, records)), "lr_geomean": json_floats(np.exp(log_mean))}
    return summaries


def row_order(summaries, chosen):
    """The table's rows: by start rate (highest first) then kind; of each step-decay grid only its pick."""
    shown = [n for n, s in summaries.items() if s["kind"] != "step_decay" or n in chosen.values()]
    return sorted(shown, key=lambda n: (summaries[n]["kind"] == "prodigy", -summaries[n]["initial_lr"],
                                        KINDS.index(summaries[n]["kind"]), n))


def cell(summary, scale=1.0, digits=4):
    if summary["mean"] is None:
        return "diverged"
    text = f"{summary['mean'] * scale:.{digits}f}"
    return text + (f" ± {summary['sem'] * scale:.{digits}f}" if summary["sem"] is not None else "")


def difference_cell(diff):
    return "–" if diff is None else f"{diff['mean']:+.4f} ± {diff['sem']:.4f} ({verdict(diff)})"


def check_cell(value):
    return "–" if value is None else "pass" if value else "**FAIL**"


def summarize_all(records, tasks, seeds):
    """Everything the report shows, as plain values: per task its rows, picks, paired differences of
    every controller row and the bar checks; the bar of every controller run from BAR_START. Written as
    summary.json."""
    result = {"seeds": list(seeds), "tasks": {}, "bar": {}}
    for task, runs in collect(records, [t.name for t in tasks], seeds).items():
        if not runs:
            continue
        summaries = summarize_task(runs)
        chosen = picks(summaries)
        labels = sorted({r["controller"] for by_seed in runs.values() for r in by_seed.values()
                         if r["kind"] == "alrs" and r["initial_lr"] == BAR_START})
        differences = {}
        for name in (n for n in summaries if summaries[n]["kind"] == "alrs"):
            label = next(iter(runs[name].values()))["controller"]
            differences[name] = {what: {"other": other, "difference": paired_difference(losses(runs[name]),
                                                                                        losses(runs[other]))}
                                 for what, other in comparisons(label, summaries[name]["initial_lr"], chosen).items()
                                 if other in runs}
        result["tasks"][task] = {"rows": summaries, "picked": chosen, "differences": differences,
                                 "bar": {label: bar_checks(runs, summaries, chosen, label) for label in labels}}
    for label in sorted({label for t in result["tasks"].values() for label in t["bar"]}):
        per_task = {task: t["bar"][label] for task, t in result["tasks"].items() if label in t["bar"]}
        result["bar"][label] = {"passed": bar_verdict(per_task),
                                "replay_tasks": sum(c["beats_replay"] is True for c in per_task.values()),
                                "tasks": len(per_task)}
    return result


def markdown(summary):
    """results.md: per task the rows, the paired differences of each controller row; then the bar."""
    seeds = summary["seeds"]
    lines = [f"# compare.py: {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "Final validation loss and test accuracy, mean ± standard error over the seeds (lower loss is better); "
             "failed: diverged or ended at chance (final validation loss ≥ "
             f"{CHANCE_FRACTION:g} ln classes). †: picked on these same seeds (lowest mean final validation "
             "loss).", ""]
    for task, t in summary["tasks"].items():
        rows, chosen = t["rows"], t["picked"]
        lines += [f"## {task}", "", "| method | final validation loss | test accuracy (%) | failed |",
                  "|---|---|---|---|"]
        for name in row_order(rows, chosen):
            s = rows[name]
            mark = " †" if name in chosen.values() else ""
            lines.append(f"| {name}{mark} | {cell(s['final_val_loss'])} | {cell(s['test_accuracy'], 100, 2)} | "
                         f"{s['failed']}/{s['final_val_loss']['runs'] + s['final_val_loss']['diverged']} |")
        for name, differences in t["differences"].items():
            lines += ["", f"Paired differences of final validation loss, {name} − row (negative: the controller is "
                          "better; better/worse: by more than 2 SE)", "", "| row | difference |", "|---|---|"]
            lines += [f"| {BEST_LABELS.get(what, '')}{d['other']}{' †' * (d['other'] in chosen.values())} | "
                      f"{difference_cell(d['difference'])} |" for what, d in differences.items()]
        lines.append("")
    for label, bar in summary["bar"].items():
        lines += [f"## The bar: {label} from {lr_text(BAR_START)}", "",
                  "| task | " + " | ".join(BAR_CHECKS.values()) + " |", "|---" * (len(BAR_CHECKS) + 1) + "|"]
        lines += [f"| {task} | " + " | ".join(check_cell(t["bar"][label][key]) for key in BAR_CHECKS) + " |"
                  for task, t in summary["tasks"].items() if label in t["bar"]]
        outcome = {True: "**PASS**", False: "**FAIL**", None: "undecided (rows missing)"}[bar["passed"]]
        lines += ["", f"Beats its replay by > 2 SE on {bar['replay_tasks']} of {bar['tasks']} tasks (needs at least "
                      f"half). The bar: {outcome}.", ""]
    return "\n".join(lines)


def plot_compare(summary, path):
    """One column per task: every table row's final validation loss (mean ± SE; log axis when the
    rows span more than 3x), and the rates from BAR_START (geometric mean over the seeds)."""
    plt = _pyplot()
    tasks = summary["tasks"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 14), squeeze=False,
                             gridspec_kw={"height_ratios": (3, 1)})
    for column, (task, t) in zip(axes.T, tasks.items()):
        rows = [n for n in row_order(t["rows"], t["picked"]) if t["rows"][n]["final_val_loss"]["mean"] is not None]
        means = [t["rows"][n]["final_val_loss"]["mean"] for n in rows]
        errors = [t["rows"][n]["final_val_loss"]["sem"] or 0 for n in rows]
        ax = column[0]
        for y, (name, mean, error) in enumerate(zip(rows, means, errors)):
            ax.errorbar(mean, y, xerr=error, fmt="o", capsize=3, color=f"C{KINDS.index(t['rows'][name]['kind'])}")
        ax.set_yticks(range(len(rows)), [n + " †" * (n in t["picked"].values()) for n in rows], fontsize=7)
        ax.invert_yaxis()
        if means and max(means) > 3 * min(means):
            ax.set_xscale("log")
        ax.set(title=task, xlabel="final validation loss (mean ± SE)")
        ax.grid(alpha=0.3, which="both")
        ax = column[1]
        for name in rows:
            if t["rows"][name]["initial_lr"] == BAR_START and t["rows"][name]["kind"] != "schedulefree":
                rates = np.array(t["rows"][name]["lr_geomean"], dtype=float)
                ax.plot(np.arange(len(rates)) * UPDATE_FREQ, rates, drawstyle="steps-pre", label=name)
        ax.set(yscale="log", xlabel="training step", ylabel=f"learning rate from {lr_text(BAR_START)}")
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def report(records, tasks, seeds, out):
    """Write results.md (and print it), summary.json and compare.png."""
    summary = summarize_all(records, tasks, seeds)
    text = markdown(summary)
    atomic_write(out / "results.md", lambda f: f.write(text.encode()))
    save_json(out / "summary.json", summary)
    if summary["tasks"]:
        plot_compare(summary, out / "compare.png")
    print(text)
    print(f"saved {out / 'results.md'}, {out / 'summary.json'} and {out / 'compare.png'}")


# ----------------------------------------------------------------------------- the command line

def build_parser():
    p = flags.ArgumentParser(prog="compare.py", description=__doc__.splitlines()[0])
    p.add_argument("--task", action="append", metavar="KEY=VALUE,...",
                   help="a task (repeatable), keys of tasks.Task; keys left out as in " + ", ".join(
                       f"{k}={getattr(BASE_TASK, k)}" for k in ("dataset", "architecture", "batch_size",
                                                                 "num_train_steps", "train_size", "val_size"))
                        + ". Default: the held-out tasks " + "; ".join(HELD_OUT_TASKS))
    p.add_argument("--controller", action="append", metavar="PATH",
                   help="a controller checkpoint (repeatable), its rows named by the file stem "
                        f"(default: {PRETRAINED.name})")
    p.add_argument("--methods", nargs="+", default=list(KINDS), choices=(*KINDS, "baselines"), metavar="KIND",
                   help=f"the methods to run, of {', '.join(KINDS)}; baselines: all but the controller's "
                        "rows; a replay runs alrs too (default: all)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default: 5)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(START_LRS), metavar="LR",
                   help="start rates (default: 1e-2 1e-3 1e-4)")
    p.add_argument("--out", default="runs/compare", help="folder of runs.jsonl and the report (default: runs/compare)")
    p.add_argument("--data-dir", default="data", help="folder holding the datasets, torchvision layout (default: data)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where children train (default: auto)")
    return p


def parse_args(argv=None):
    """The flags, checked: ``tasks`` (Task list), ``kinds`` (set) and ``controllers`` (paths) added."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds <= 0 or any(lr <= 0 for lr in args.lrs):
        parser.error("--seeds and --lrs must be positive")
    try:
        args.tasks = list(dict.fromkeys(parse_task(spec, BASE_TASK) for spec in args.task or HELD_OUT_TASKS))
    except ValueError as error:
        parser.error(f"argument --task: {error}")
    for task in args.tasks:
        if task.dataset not in DATASETS and not Path(task.dataset).is_dir():
            parser.error(f"argument --task: {task.name}: dataset one of {', '.join(DATASETS)} or an image folder")
        if task.num_train_steps % UPDATE_FREQ or task.num_train_steps < 2 * UPDATE_FREQ:
            parser.error(f"argument --task: num_train_steps must be a multiple of {UPDATE_FREQ}, at least twice it")
    args.kinds = set(BASELINES if "baselines" in args.methods else ()) | set(args.methods) - {"baselines"}
    args.kinds |= {"alrs"} if args.kinds & {"replay", "pooled_replay"} else set()
    for kind, package in PACKAGES.items():
        if kind in args.kinds and importlib.util.find_spec(package) is None:
            parser.error(f"--methods {kind} needs the {package} package: pip install {package} "
                         "(or leave it out of --methods)")
    args.controllers = (args.controller or [str(PRETRAINED)]) if "alrs" in args.kinds else []
    labels = [Path(path).stem for path in args.controllers]
    if len(set(labels)) < len(labels):
        parser.error("argument --controller: two controllers with the same file name; rename one")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda is not available on this machine (use cpu or auto)")
    return args


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_controllers(records, controllers):
    """Each controller file readable; runs.jsonl's rows of its name from this same file, not an older one."""
    for path in controllers:
        read_controller_checkpoint(path)
        digest, label = file_digest(path), Path(path).stem
        if any(r.get("controller") == label and r["controller_digest"] != digest for r in records):
            raise UserError(f"the runs of '{label}' in runs.jsonl come from another {Path(path).name}; "
                            "rename the file or use another --out")


def run_method(method, task, data, seed, seeds, tasks, records, device):
    """train_run's record, with a controller's name, path and digest. A replay follows the controller's
    finished runs on the other ``seeds`` and records which seeds those were; a pooled replay follows
    its runs on every seed of the other ``tasks`` (by fraction of the run) and records those tasks."""
    extra, replay = {}, None
    alrs_name = Method("alrs", method.lr, method.controller).name if method.controller else None
    if method.kind == "replay":
        alrs = collect(records, [task.name], seeds)[task.name][alrs_name]
        replay, extra["replay_seeds"] = replay_schedule(alrs, seed, method.lr)
    if method.kind == "pooled_replay":
        others = collect(records, [t.name for t in tasks if t != task], seeds)
        curves = [r["lr"] for runs in others.values() for r in runs.get(alrs_name, {}).values()]
        replay = pooled_replay(method.lr, curves, task.num_train_steps // UPDATE_FREQ, UPDATE_FREQ)
        extra["pooled_tasks"] = sorted(name for name, runs in others.items() if alrs_name in runs)
    if method.controller:
        extra.update(controller=Path(method.controller).stem, controller_path=str(method.controller),
                     controller_digest=file_digest(method.controller))
    return train_run(method, task, data, seed, device, replay) | extra


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    drop_torn_last_line(out / "runs.jsonl")
    records = read_jsonl(out / "runs.jsonl")
    check_controllers(records, args.controllers)
    seeds = list(range(args.seeds))
    methods = make_methods(args.kinds, args.controllers, args.lrs)
    if len(seeds) < 2 and "replay" in args.kinds:
        print("one seed: no replay (it is the other seeds' schedule)")
        methods = [m for m in methods if m.kind != "replay"]
    if len(args.tasks) < 2 and "pooled_replay" in args.kinds:
        print("one task: no pooled replay (it is the schedule of the other tasks)")
        methods = [m for m in methods if m.kind != "pooled_replay"]
    done = {(r["task"], r["method"], r["seed"]) for r in records}
    todo = [(t, m, s) for t in args.tasks for m in methods for s in seeds if (t.name, m.name, s) not in done]
    todo.sort(key=lambda item: item[1].kind == "pooled_replay")  # last: it needs every task's controller runs
    with tqdm(total=len(todo), unit="run", dynamic_ncols=True) as progress:
        for task, group in itertools.groupby(todo, key=lambda item: item[0]):
            data = load_data(task, args.data_dir, device)
            # the replays after the controller's runs: each needs them on every other seed
            for _, method, seed in sorted(group, key=lambda item: (item[1].kind == "replay", item[2])):
                progress.set_postfix_str(f"{task.name} {method.name} seed {seed}")
                record = run_method(method, task, data, seed, seeds, args.tasks, records, device)
                append_jsonl(out / "runs.jsonl", record)
                records.append(record)
                progress.update()
    report(records, args.tasks, seeds, out)


if __name__ == "__main__":
    run_cli(main)
