"""The paper's setting trained to the end, one time-boxed slice per call, each call going on where the
last one stopped.

    python experiments/paper.py --data-dir data --budget-min 8                  # the next slice of the committed run
    python experiments/paper.py --data-dir data --budget-min 2 --tiny --out /tmp/paper   # the same path, CPU-sized

A slice continues the run in --out (default experiments/results/paper) through its phases, in order:
train.py at the paper's setting (Fashion-MNIST, LeNet-5, batch 1000, 1000-step episodes, every other
setting the reference's default, 8 environments: 62 PPO updates), until its updates are done; the
baselines grid (baselines.py: 48 step decays, 4 constant rates and 4 cosines); the test from the
trained start rate over 10 seeds (test.py); and the table, <out>/results.md. A phase the budget
cannot finish gets SIGINT at the budget's end, as Ctrl-C: train.py keeps every finished PPO update,
baselines.py every finished run, and the next call goes on from there (a run stopped before its first
update starts again). Leave the call's limit a minute beyond --budget-min for start-up and writing
back. <out> holds only what continuing needs (args, records, checkpoints, progress.png: a few MB), so
it can be committed between slices; <out>/slices.json records every slice.
"""
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flags  # noqa: E402
from utils import UserError, atomic_write, load_json, read_jsonl, run_cli, save_json  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from capped import run_capped  # noqa: E402

SUFFIX = "paper"  # the training run's id ends with it
PAPER = {"dataset": "fa-mnist", "architecture": "cnn", "num_envs": 8}  # the rest: the reference's defaults
TINY = {"dataset": "fa-mnist", "architecture": "mlp", "batch_size": 16, "train_size": 200, "val_size": 50,
        "num_train_steps": 12, "update_freq": 3, "num_envs": 2, "ppo2_update_freq": 4, "ppo2_nminibatches": 2,
        "ppo2_total_timesteps": 192}  # 24 PPO updates of one 4-action episode per environment (a first slice of 3 s stops it)
TINY_GRID = {"initial_lrs": [1e-2, 1e-3], "discount_steps": [3], "discount_factors": [0.5]}
TEST_RUNS = {"paper": 10, "tiny": 2}
PHASES = ("train", "baselines", "test", "table")


class Slice:
    """One call: the run folder, where its files are, and the commands of its phases."""

    def __init__(self, out, data_dir, device, tiny):
        self.out, self.data_dir, self.device, self.tiny = out, data_dir, device, tiny
        self.runs = out / "runs"
        self.setting = TINY if tiny else PAPER

    def run_dir(self):
        """The training run, if it started and finished a PPO update (one stopped before has no
        latest.pt to resume from: it is removed, and starts again)."""
        found = sorted(self.runs.glob(f"*_{SUFFIX}"))
        if found and not (found[0] / "checkpoints" / "latest.pt").exists():
            shutil.rmtree(found[0])
            return None
        return found[0] if found else None

    def command(self, phase):
        run = self.run_dir()
        common = {"runs_dir": str(self.runs), "device": self.device}
        if phase == "train" and run is None:
            return flags.command_line("train", {**self.setting, **common, "data_dir": self.data_dir, "tb_suffix": SUFFIX})
        if phase == "train":
            return flags.command_line("train", {"resume": run.name, **common})
        if phase == "baselines":
            trained = load_json(run / "args.json")
            setting = {name: trained[name] for name in flags.SETTING} | {"data_dir": self.data_dir, **common}
            return flags.command_line("baselines", setting | (TINY_GRID if self.tiny else {}))
        return flags.command_line("test", {"test_id": run.name, "test_schedule": "latest", **common,
                                           "test_runs": TEST_RUNS["tiny" if self.tiny else "paper"]})

    def training_done(self):
        """Whether every planned PPO update of the training run is in its records."""
        run = self.run_dir()
        if run is None:
            return False
        args = load_json(run / "args.json")
        planned = args["ppo2_total_timesteps"] // (args["num_envs"] * args["ppo2_update_freq"])
        return len(read_jsonl(run / "updates.jsonl")) >= planned

    def write_table(self):
        """<out>/results.md: the test's final validation loss from each start, learned against the
        untrained controller and the best of each baseline kind."""
        results = load_json(next(self.run_dir().glob("test/*/results.json")))
        lines = [f"# The paper's setting: {results['tested_on']}", "",
                 f"`{results['test_id']}`, {len(results['seeds'])} seeds, the policy after its last PPO update "
                 f"({results['mode']}); final validation loss, mean ± standard error", "",
                 "| row | final val loss |", "|---|---|"]
        for key, row in results["rows"].items():
            summary = results["summary"][key]["final_val_loss"]
            spread = f" ± {summary['sem']:.4f}" if summary.get("sem") is not None else ""
            lines.append(f"| {row['label']} | {summary['mean']:.4f}{spread} |")
        lines += ["", "Paired differences (row − other, negative: the row is better):", ""]
        lines += [f"- {name}: {d['mean']:+.4f} ± {d['sem']:.4f}" for name, d in results["paired_differences"].items() if d]
        atomic_write(self.out / "results.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))


def run_slice(work, budget_s):
    """The phases not yet done, in order, each within what is left of the budget; returns each phase's
    status this slice (done before, ok, timed out, failed, or not reached)."""
    deadline, statuses = time.monotonic() + budget_s, {}
    done = load_json(work.out / "slices.json")["done"] if (work.out / "slices.json").exists() else []
    for phase in PHASES:
        if phase in done:
            statuses[phase] = "done before"
            continue
        left = deadline - time.monotonic()
        if left <= 0 or any(s in ("timed out", "failed") for s in statuses.values()):
            statuses[phase] = "not reached"
            continue
        if phase == "table":
            work.write_table()
            status = "ok"
        else:
            command = work.command(phase)
            print(f"{phase}, {left:.0f} s left: {command}", flush=True)
            status = run_capped(command, left, work.out / "logs" / f"{phase}.log")
            if phase == "train" and status == "ok" and not work.training_done():
                status = "failed"
        statuses[phase] = status
        print(f"  {phase}: {status}", flush=True)
        if status == "ok":
            done.append(phase)
    return statuses, done


def main(argv=None):
    parser = flags.ArgumentParser(prog="paper.py", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=8.0, help="this slice's wall time, minutes (default: 8)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "paper"),
                        help="the run's folder, continued on every call (default: experiments/results/paper)")
    parser.add_argument("--data-dir", default="data", help="folder holding FashionMNIST/raw/ (default: data)")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"), help="(default: cuda)")
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized setting through the same phases")
    args = parser.parse_args(argv)
    if args.budget_min <= 0:
        parser.error(f"argument --budget-min: must be positive, got {args.budget_min}")
    out = Path(args.out).resolve()
    record = load_json(out / "slices.json") if (out / "slices.json").exists() else {"tiny": args.tiny, "slices": []}
    if record["tiny"] != args.tiny:
        raise UserError(f"{out} holds a {'tiny' if record['tiny'] else 'paper'} run; "
                        f"{'add' if record['tiny'] else 'drop'} --tiny or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    work = Slice(out, str(Path(args.data_dir).resolve()), args.device, args.tiny)
    started = time.time()
    statuses, done = run_slice(work, args.budget_min * 60)
    record["done"] = done
    record["slices"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                             "budget_min": args.budget_min, "seconds": round(time.time() - started, 1),
                             "device": args.device, "phases": statuses})
    save_json(out / "slices.json", record)
    left = [phase for phase in PHASES if phase not in done]
    print(json.dumps(statuses) + ("\nthe run is complete: " + str(out / "results.md") if not left else
                                  f"\nnext call goes on with: {', '.join(left)}"))


if __name__ == "__main__":
    run_cli(main)
