"""Benchmark a trained controller against what users pick instead, on tasks it never trained on.

    python compare.py --data-dir data                         # the shipped controller on the 4 held-out tasks
    python compare.py --data-dir data --methods baselines     # the baselines alone (computed once)
    python compare.py --data-dir data --controller runs/<id>/checkpoints/best.pt   # adds only its rows

Every method trains the task's child in a plain PyTorch loop, as a user would write it: the task's
optimizer (Adam with default betas unless the task names another) and one scheduler call per step, for the controller (scheduler.ALRSScheduler), its
open-loop replay, a constant rate, step decay, cosine, OneCycle and ReduceLROnPlateau, each from
every start rate; schedule-free AdamW at each start rate; Prodigy; with several tasks, the pooled
replay (the controller's schedule averaged over the other tasks). On a seed every method starts
from the same initialization and trains on the same batches, so differences are paired. Each
finished run is a line of <out>/runs.jsonl, and a rerun skips it. The report (results.md, printed;
summary.json; compare.png; compare_report.py's) covers every finished run of the tasks and seeds asked
for. docs/compare.md describes the methods and the output.
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
from optimizers import OptimizerSpec
from schedules import pooled_replay, replay_schedules
from compare_report import BASELINES, CONTROLLED, KINDS, METRICS, START_LRS, UPDATE_FREQ, collect, lr_text, report
from tasks import Task, load_task_splits, parse_task
from utils import UserError, append_jsonl, drop_torn_last_line, json_floats, read_jsonl, resolve_device, run_cli

BASE_TASK = Task(dataset="fa-mnist", architecture="mlp", batch_size=128, num_train_steps=500, train_size=20000,
                 val_size=2000)  # the shipped controller's training task; --task keys left out take its values
HELD_OUT_TASKS = ("architecture=cnn",  # an unseen child (LeNet-5)
                  "label_noise=0.5",  # an unseen variant of the dataset
                  "num_train_steps=2000",  # a 4x longer horizon
                  "batch_size=32")  # another batch size
PACKAGES = {"schedulefree": "schedulefree", "prodigy": "prodigyopt"}  # optional, imported only when asked for
STEP_DECAY_GRID = ((10, 0.9), (10, 0.5), (4, 0.9), (4, 0.5))  # (discount every total/k steps, factor)
PLATEAU_PATIENCE = 4  # torch's count: the 5th check without a new best (50 steps) halves the rate
PRETRAINED = PRETRAINED_DIR / "fa-mnist_mlp_stable.pt"


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
    """The controller as a user builds it, watching the whole validation split as in training;
    ``total_steps``, the run's length, is what a controller that observes the fraction of the run done
    needs (cosine's T_max)."""
    return ALRSScheduler(optimizer, model, path, val_data, update_freq=UPDATE_FREQ, total_steps=total_steps,
                         val_size=None)  # all of the task's validation images, as the environment watches


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


# ----------------------------------------------------------------------------- the command line

def build_parser():
    p = flags.ArgumentParser(prog="compare.py", description=__doc__.splitlines()[0])
    p.add_argument("--task", action="append", metavar="KEY=VALUE,...",
                   help="a task (repeatable), keys of tasks.Task; keys left out as in " + ", ".join(
                       f"{k}={getattr(BASE_TASK, k)}" for k in ("dataset", "architecture", "batch_size",
                                                                 "num_train_steps", "train_size", "val_size"))
                        + "; family=SEED is that instance of the family of random classifiers (other keys override it). "
                        "Default: the held-out tasks " + "; ".join(HELD_OUT_TASKS))
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
    if any(task.optimizer == "schedulefree" for task in args.tasks) and importlib.util.find_spec("schedulefree") is None:
        parser.error("argument --task: a task with optimizer=schedulefree needs the schedulefree package "
                     "(pip install schedulefree)")
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
