"""One prepared GPU check, within one wall-time budget: the GPU-only tests; bench.py on the three
children, and ResNet-18 again compiled in bf16; train.py's loop at 8 to 64 environments (LeNet-5); a
--preset stable training at the paper's setting (Fashion-MNIST, LeNet-5, batch 1000, 1000-step
episodes, initial rates 1e-2/1e-3/1e-4) with the fastest number of environments, for as many PPO
updates as the budget allows; then a short test of that controller against its untrained policy and
a reduced baseline grid.

    python experiments/gpu_check.py --data-dir data --out runs/gpu-check
    python experiments/gpu_check.py --smoke --data-dir data --out /tmp/gpu-check   # tiny, on the CPU

Run it from the repository root on a machine with one GPU; --data-dir holds FashionMNIST/raw/ (the
.gz files or the unpacked IDX files). Each step is a subprocess with its own time cap, a share of
the budget; time a step leaves unused goes to the training. A step past its cap gets SIGINT, as
Ctrl-C (train.py keeps its checkpoint, test.py reports the seeds it finished), is reported as timed
out, and the next step still runs. Writes under --out: logs/<n>-<step>.log, bench.json,
bench-variant.json, bench-loop.json, runs/ (the training run with updates.jsonl and checkpoints, the baselines, the
test's results.json and figures), and summary.md and summary.json, rewritten after every step.
"""
import argparse
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flags  # noqa: E402
from data import missing_files  # noqa: E402
from runs import TRAINING_STATE, list_runs  # noqa: E402
from schedules import BASELINE_KINDS  # noqa: E402
from utils import UserError, atomic_write, load_json, read_jsonl, run_cli, save_json  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from capped import run_capped  # noqa: E402

GPU_TESTS = "tests/test_environment.py::test_a_block_never_waits_on_the_gpu"  # skipped without a GPU
SPEED_MARGIN = 1.2  # training is a little slower than bench.py's steady state: resets, the controller, PPO


@dataclass(frozen=True)
class Plan:
    """What the steps run: the paper's setting on a GPU, or a tiny one on the CPU (--smoke)."""
    device: str
    bench: dict  # bench.py's flags for the three children
    variant_name: str
    variant: dict  # bench.py's flags of its second run
    loop: dict  # bench.py's flags for the training loop per number of environments (the training's child)
    setting: dict  # the child-training flags of train.py and baselines.py (test.py reads them from the run)
    ppo: dict  # train.py's controller flags besides --preset stable and --initial-lr 0
    grid: dict  # baselines.py's reduced grid
    test_runs: int
    max_total_steps: int  # the most controller steps the training is given, however much time is left
    startup_s: float  # train.py's time before its first update: imports, data, device, first episode start


FULL = Plan(
    device="cuda",
    bench={"children": "mlp,cnn,resnet", "steps": 100, "num_envs": 8},
    variant_name="bench resnet compile bf16",
    variant={"children": "resnet", "steps": 100, "num_envs": 8, "compile": 1, "precision": "bf16"},
    loop={"children": "cnn", "steps": 10, "num_envs": 8, "loop_envs": "8,16,32,64", "loop_rollout": 10},
    setting={"dataset": "fa-mnist", "architecture": "cnn", "batch_size": 1000, "update_freq": 10,
             "num_train_steps": 1000},
    ppo={"num_envs": 8, "ppo2_update_freq": 100, "ppo2_nminibatches": 4},
    grid={"initial_lrs": [1e-2, 1e-3, 1e-4], "discount_steps": [100], "discount_factors": [0.9]},
    test_runs=3,
    max_total_steps=50000,  # a whole default run: train.py's --ppo2-total-timesteps
    startup_s=30,
)
TINY = {"batch_size": 16, "train_size": 200, "val_size": 50}
SMOKE = Plan(
    device="cpu",
    bench={"children": "mlp", "steps": 10, "num_envs": 2, **TINY},
    variant_name="bench mlp bf16",
    variant={"children": "mlp", "steps": 10, "num_envs": 2, "precision": "bf16", **TINY},
    loop={"children": "mlp", "steps": 10, "num_envs": 2, "loop_envs": "2,4", "loop_rollout": 2, **TINY},
    setting={"dataset": "fa-mnist", "architecture": "mlp", "update_freq": 10, "num_train_steps": 20, **TINY},
    ppo={"num_envs": 2, "ppo2_update_freq": 2, "ppo2_nminibatches": 2},  # one 2-step episode per update
    grid={"initial_lrs": [1e-2, 1e-3, 1e-4], "discount_steps": [10], "discount_factors": [0.9]},
    test_runs=2,
    max_total_steps=16,  # 2 updates of 4 environments' 2 steps
    startup_s=5,
)


class Skipped(Exception):
    """A step that cannot run here or now; the message says why."""


@dataclass
class Step:
    """One step: ``command(cap)`` gives its ``python ...`` line once the earlier steps are done (or
    raises Skipped); ``figures(log)`` reads its key figures from what it wrote, {} if nothing."""
    name: str
    share: float  # of the budget: its cap, and what the earlier steps leave for it
    command: Callable
    figures: Callable = lambda log: {}
    greedy: bool = False  # capped by what the later steps' shares leave, not by its own share


class Check:
    """The steps of one check and what they share: the plan, the output folder, the training run."""

    def __init__(self, plan, out, data_dir):
        self.plan, self.out, self.runs_dir = plan, out, out / "runs"
        self.setting = {**plan.setting, "data_dir": str(data_dir), "runs_dir": str(self.runs_dir),
                        "device": plan.device}
        self.planned_updates = None

    def steps(self):
        """The steps in order, with their shares of the budget (the bench variant's leaves room for
        torch.compile's first compilation); the training, with the number of environments the loop
        timing found fastest, takes what the others leave, the test what is left at the end."""
        return [Step("gpu tests", 0.07, self.gpu_tests, pytest_figures),
                Step("bench", 0.16, lambda cap: self.bench(self.plan.bench, "bench.json"),
                     lambda log: self.bench_figures("bench.json")),
                Step(self.plan.variant_name, 0.15, lambda cap: self.bench(self.plan.variant, "bench-variant.json"),
                     lambda log: self.bench_figures("bench-variant.json")),
                Step("bench loop", 0.1, lambda cap: self.bench(self.plan.loop, "bench-loop.json"), self.loop_figures),
                Step("train", 0.2, self.train, self.train_figures, greedy=True),
                Step("baselines", 0.09, self.baselines, self.baseline_figures),
                Step("test", 0.23, self.test, self.test_figures, greedy=True)]

    def gpu_tests(self, cap):
        if not torch.cuda.is_available():
            raise Skipped("no CUDA device")
        return shlex.join(["python", "-m", "pytest", "-q", GPU_TESTS])

    def bench(self, values, name):
        return flags.command_line("bench", {"device": self.plan.device, **values, "json": str(self.out / name)})

    def bench_figures(self, name):
        """Milliseconds per child step per environment of the vectorized run (what the targets are)."""
        path = self.out / name
        if not path.exists():
            return {}
        figures = load_json(path)
        return {"device": figures["device"]} | {
            f"{child} ms/step": child_figures["ms_per_child_step"]["vec_env"]
            for child, child_figures in figures["children"].items()}

    def loop_figures(self, log):
        """The training loop's controller steps per second at each number of environments, and the fastest."""
        path = self.out / "bench-loop.json"
        if not path.exists():
            return {}
        rates = {int(n): rate for n, rate in load_json(path).get("training_loop_steps_per_second", {})
                 .get(self.plan.loop["children"], {}).items() if rate is not None}
        return {f"{n} envs steps/s": rate for n, rate in rates.items()} | (
            {"fastest": max(rates, key=rates.get)} if rates else {})

    def train(self, cap):
        num_envs, rate = self.fastest_envs()
        self.planned_updates = self.updates_that_fit(cap, num_envs, rate)
        timesteps = self.planned_updates * num_envs * self.plan.ppo["ppo2_update_freq"]
        return flags.command_line("train", {**self.setting, "preset": "stable", "initial_lr": 0, **self.plan.ppo,
                                            "num_envs": num_envs, "ppo2_total_timesteps": timesteps})

    def fastest_envs(self):
        """The number of environments whose training loop the loop timing found fastest, and its
        controller steps per second; without the timing, the plan's number and no rate."""
        figures = self.loop_figures(None)
        if "fastest" not in figures:
            return self.plan.ppo["num_envs"], None
        return figures["fastest"], figures[f"{figures['fastest']} envs steps/s"]

    def updates_that_fit(self, cap, num_envs, rate):
        """As many PPO updates as fit in ``cap`` at the controller steps per second the loop timing
        measured (or, without it, at bench.py's speed for this child); without either,
        plan.max_updates (the cap's SIGINT stops the training, its checkpoint kept)."""
        steps_per_update = num_envs * self.plan.ppo["ppo2_update_freq"]
        if rate is not None:
            seconds = steps_per_update / rate * SPEED_MARGIN
        else:
            ms = self.bench_figures("bench.json").get(f"{self.plan.setting['architecture']} ms/step")
            if ms is None:
                return self.plan.max_updates
            seconds = steps_per_update * self.plan.setting["update_freq"] * ms / 1000 * SPEED_MARGIN
        max_updates = self.plan.max_total_steps // steps_per_update
        return max(1, min(max_updates, int((cap - self.plan.startup_s) / seconds)))

    def run_dir(self):
        """The training run's folder (the only experiment under runs/), or None before train.py made it."""
        ids = list_runs(self.runs_dir)
        return self.runs_dir / ids[0] if ids else None

    def train_figures(self, log):
        run = self.run_dir()
        if run is None:
            return {}
        updates = read_jsonl(run / "updates.jsonl")
        return {"PPO updates": len(updates), "planned": self.planned_updates,
                "last mean final val loss": updates[-1]["mean_final_val_loss"] if updates else None, "run": run.name}

    def baselines(self, cap):
        grid = self.plan.grid
        runs = len(grid["initial_lrs"]) * (len(grid["discount_steps"]) * len(grid["discount_factors"]) + 2)
        # + a constant rate and a cosine annealing per initial rate; --num-envs: all of them in one round
        return flags.command_line("baselines", {**self.setting, **grid, "num_envs": runs})

    def baseline_figures(self, log):
        paths = list(self.runs_dir.glob("baselines/*/results.jsonl"))
        return {"finished runs": len(read_jsonl(paths[0]))} if paths else {}

    def test(self, cap):
        run = self.run_dir()
        if run is None or not (run / "checkpoints" / TRAINING_STATE).exists():
            raise Skipped("no trained controller: the training finished no PPO update")
        return flags.command_line("test", {"test_id": run.name, "test_schedule": "latest",
                                           "test_runs": self.plan.test_runs, "runs_dir": str(self.runs_dir),
                                           "device": self.plan.device})

    def test_figures(self, log):
        """Mean final validation loss from each start rate: learned, untrained, and the best baseline
        from that rate (of the step decay, constant and cosine rows)."""
        paths = list(self.runs_dir.glob("*/test/*/results.json"))
        if not paths:
            return {}
        results = load_json(paths[0])
        final = lambda key: results["summary"][key]["final_val_loss"]["mean"] if key in results["summary"] else None
        figures = {"seeds": len(results["seeds"])}
        for lr in (key.removeprefix("learned@") for key in results["rows"] if key.startswith("learned@")):
            baselines = {kind: final(f"{kind}@{lr}") for kind in BASELINE_KINDS}
            best = min((kind for kind in baselines if baselines[kind] is not None), key=baselines.get, default=None)
            figures[f"from {lr}"] = {"learned": final(f"learned@{lr}"), "untrained": final(f"untrained@{lr}"),
                                     "best baseline": baselines.get(best), "best kind": best}
        return figures


def pytest_figures(log):
    """pytest's closing line, e.g. '3 passed in 20.1s'."""
    lines = [line for line in Path(log).read_text().splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)]
    return {"pytest": lines[-1].strip("= ")} if lines else {}


def run_steps(steps, budget_s, logs):
    """Run the steps in order, each within its cap, and yield each one's result as it ends. A step's
    cap is its share of the budget, at most what the later steps' shares leave (greedy steps: all that
    they leave), so an overrun eats into the step after it, never past the budget."""
    deadline = time.monotonic() + budget_s
    for number, step in enumerate(steps, 1):
        cap = deadline - time.monotonic() - budget_s * sum(later.share for later in steps[number:])
        if not step.greedy:
            cap = min(cap, budget_s * step.share)
        log = Path(logs) / f"{number}-{step.name.replace(' ', '-')}.log"
        yield run_step(step, cap, log, f"[{number}/{len(steps)}] {step.name}")


def run_step(step, cap, log, title):
    """One step's result: status (ok, failed, timed out or skipped), seconds, cap and key figures."""
    started, command, note = time.monotonic(), None, None
    try:
        if cap <= 0:
            raise Skipped("no time left in the budget")
        command = step.command(cap)
        print(f"{title}, cap {cap:.0f} s: {command}", flush=True)
        status = run_capped(command, cap, log)
    except Skipped as reason:
        print(f"{title}: skipped, {reason}", flush=True)
        status, note = "skipped", str(reason)
    figures = step.figures(log) if log.exists() else {}
    seconds = time.monotonic() - started
    if status != "skipped":
        print(f"  {status} in {seconds:.0f} s; {describe(figures)}; log {log}", flush=True)
    return {"step": step.name, "status": status, "seconds": round(seconds, 1), "cap_s": round(max(cap, 0), 1),
            "figures": figures, "note": note, "command": command, "log": str(log) if log.exists() else None}


def describe(figures):
    """Key figures on one line, 'name value, ...'; a nested dict (the losses from one start rate) as
    'name: key value / key value'."""
    def text(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{name}: " + " / ".join(f"{key} {text(v)}" for key, v in value.items())
                     if isinstance(value, dict) else f"{name} {text(value)}" for name, value in figures.items())


def write_summary(out, header, results):
    """summary.json and summary.md (a table: step, status, seconds, key figures); returns the table."""
    save_json(out / "summary.json", {**header, "steps": results})
    rows = [f"| {r['step']} | {r['status']} | {r['seconds']:.0f} of {r['cap_s']:.0f} | "
            f"{r['note'] or describe(r['figures'])} |" for r in results]
    text = "\n".join([f"# GPU check: {header['device']}", "",
                      f"torch {header['torch']}, budget {header['budget_min']:g} min"
                      + (", --smoke" if header["smoke"] else "") + f"; `{header['command']}`", "",
                      "| step | status | seconds (of cap) | key figures |", "|---|---|---|---|", *rows, ""])
    atomic_write(out / "summary.md", lambda f: f.write(text.encode()))
    return text


def parse_args(argv):
    parser = flags.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n")[0],
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=9.0, help="wall-time budget of all steps, minutes")
    parser.add_argument("--out", default=f"runs/gpu-check-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="output folder (new or empty)")
    parser.add_argument("--data-dir", default="data", help="folder holding FashionMNIST/raw/ (IDX or .gz files)")
    parser.add_argument("--smoke", action="store_true", help="tiny steps on the CPU (MLP children), seconds each")
    args = parser.parse_args(argv)
    if args.budget_min <= 0:
        parser.error(f"argument --budget-min: must be positive, got {args.budget_min}")
    return args


def main(argv=None):
    args = parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device on this machine; --smoke runs a tiny check on the CPU")
    if missing := missing_files(plan.setting["dataset"], args.data_dir):
        raise UserError(f"Fashion-MNIST not found: {', '.join(missing)} (or .gz) missing in "
                        f"{Path(args.data_dir) / 'FashionMNIST' / 'raw'}/; pass --data-dir")
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; give a new --out")
    check = Check(plan, out, Path(args.data_dir).resolve())
    header = {"device": plan.device, "torch": torch.__version__, "budget_min": args.budget_min, "smoke": args.smoke,
              "command": shlex.join(["python", "experiments/gpu_check.py", *(argv or sys.argv[1:])])}
    results = []
    for result in run_steps(check.steps(), args.budget_min * 60, out / "logs"):
        results.append(result)
        header["device"] = result["figures"].get("device", header["device"])
        text = write_summary(out, header, results)
    print(f"\n{text}\nwrote {out / 'summary.md'} and {out / 'summary.json'}")
    if any(r["status"] == "failed" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
