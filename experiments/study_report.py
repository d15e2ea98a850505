"""Figures and tables of the learning study (experiments/learning_study.sh).

    python experiments/study_report.py RUNS_DIR --out experiments/results/learning_study

Reads every arm's episodes.jsonl, updates.jsonl and test results under RUNS_DIR (folders ending in
``_arm-<name>``) and writes learning_curves.png (mean final validation loss per PPO update, and its
running mean), by_initial_lr.png (the same and the geometric-mean learning rate, split by the
episode's initial rate), policy.png (entropy, fraction of actions inside the clip range, approx KL)
and results.md (the 10-seed test tables, deterministic and sampled).
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alrs.controller import RANDOM_INITIAL_LRS as STARTS, nearest_start  # noqa: E402
from plots import running_mean  # noqa: E402

WINDOW = 10  # updates in the running mean


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def per_update(episodes, num_updates, key="final_val_loss", start=None):
    """Mean of ``key`` over the finished episodes of each update (NaN where none)."""
    out = np.full(num_updates, np.nan)
    for update in range(num_updates):
        values = [e[key] for e in episodes if e["update"] == update and e["final_val_loss"] is not None
                  and (start is None or nearest_start(e["initial_lr"]) == start)]
        if values:
            out[update] = np.mean(values) if key != "lr_geomean" else np.exp(np.mean(np.log(values)))
    return out


def load_arms(runs_dir, checkpoint):
    arms = {}
    for folder in sorted(Path(runs_dir).glob("*_arm-*")):
        arm = folder.name.rsplit("_arm-", 1)[1]
        args = json.loads((folder / "args.json").read_text())
        tests = {}
        for mode in ("deterministic", "sampled"):
            found = sorted(folder.glob(f"test/*_{checkpoint}_{mode}/results.json"))
            if found:
                tests[mode] = json.loads(found[0].read_text())
        arms[arm] = {"folder": folder, "args": args, "episodes": jsonl(folder / "episodes.jsonl"),
                     "updates": jsonl(folder / "updates.jsonl"), "tests": tests}
    return arms


def describe(args):
    """The flags in which an arm departs from the reference's defaults."""
    parts = []
    if args.get("action_param", "clip") != "clip":
        parts.append(f"--action-param {args['action_param']}")
    if args.get("discrete"):
        parts.append("--discrete 1")
    if args["ppo2_cliprange"] != 10.0:
        parts.append(f"--ppo2-cliprange {args['ppo2_cliprange']:g}")
    if args.get("norm_clip") is not None:
        parts.append(f"--norm-clip {args['norm_clip']:g}")
    if args["ppo2_ent_coef"] != 0.1:
        parts.append(f"--ppo2-ent-coef {args['ppo2_ent_coef']:g}")
    if args.get("reward", "val-loss") != "val-loss":
        parts.append(f"--reward {args['reward']}")
    return " ".join(parts) or "reference defaults"


def plot_learning_curves(arms, path):
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, data in arms.items():
        curve = per_update(data["episodes"], len(data["updates"]))
        line, = ax.plot(curve, ".", alpha=0.3)
        ax.plot(running_mean(curve, WINDOW), color=line.get_color(), label=f"{arm}: {describe(data['args'])}")
    ax.set(xlabel="PPO update", ylabel="mean final validation loss of the update's episodes",
           title=f"Training episodes (dots) and running mean over {WINDOW} updates; lower is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_by_initial_lr(arms, path):
    fig, axes = plt.subplots(2, 3, figsize=(16, 8), sharex=True)
    for column, start in enumerate(STARTS):
        for arm, data in arms.items():
            n = len(data["updates"])
            axes[0, column].plot(running_mean(per_update(data["episodes"], n, start=start), WINDOW), label=arm)
            axes[1, column].plot(running_mean(per_update(data["episodes"], n, "lr_geomean", start), WINDOW), label=arm)
        axes[0, column].set(title=f"episodes starting at lr {start:g}", ylabel="final validation loss")
        axes[1, column].set(xlabel="PPO update", ylabel="geometric-mean learning rate of the episode",
                            yscale="log")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend()
    fig.suptitle(f"What the policy does for each initial rate (running means over {WINDOW} updates)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_policy(arms, path):
    keys = (("entropy", "policy entropy"), ("action_inside", "fraction of sampled actions inside the clip range"),
            ("approx_kl", "approx KL per update"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for arm, data in arms.items():
        for ax, (key, _) in zip(axes, keys):
            values = [u.get(key, np.nan) for u in data["updates"]]
            ax.plot(values, label=arm)
    for ax, (key, label) in zip(axes, keys):
        ax.set(xlabel="PPO update", ylabel=label)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell(summary):
    s = summary["final_val_loss"]
    return "diverged" if s["mean"] is None else f"{s['mean']:.4f} ± {s['sem']:.4f}"


def diff_cell(diff):
    if diff is None:
        return "n/a"
    verdict = "**better**" if diff["mean"] < -2 * diff["sem"] else "worse" if diff["mean"] > 2 * diff["sem"] else "same"
    return f"{diff['mean']:+.4f} ± {diff['sem']:.4f} ({verdict})"


def tables(arms):
    """Markdown: one row per arm, mode and initial rate; final validation loss mean ± standard error."""
    lines = ["| arm | mode | from | learned | untrained | best step decay | best constant | best cosine "
             "| learned − untrained | learned − step decay | learned − cosine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, data in arms.items():
        for mode, result in data["tests"].items():
            summary, diffs = result["summary"], result["paired_differences"]
            for start in STARTS:
                lr = f"{start:g}"
                row = [f"learned@{lr}", f"untrained@{lr}", f"step_decay@{lr}", f"constant@{lr}", f"cosine@{lr}"]
                if row[0] not in summary:
                    continue
                cells = [cell(summary[k]) if k in summary else "n/a" for k in row]
                lines.append(f"| {arm} | {mode} | {lr} | " + " | ".join(cells) + " | "
                             + diff_cell(diffs.get(f"{row[0]} - {row[1]}")) + " | "
                             + diff_cell(diffs.get(f"{row[0]} - {row[2]}")) + " | "
                             + diff_cell(diffs.get(f"{row[0]} - {row[4]}")) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir")
    parser.add_argument("--out", default="experiments/results/learning_study")
    parser.add_argument("--checkpoint", default="latest", help="the tested checkpoint whose results to tabulate")
    args = parser.parse_args()
    arms = load_arms(args.runs_dir, args.checkpoint)
    if not arms:
        parser.error(f"no *_arm-* experiments in {args.runs_dir}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_learning_curves(arms, out / "learning_curves.png")
    plot_by_initial_lr(arms, out / "by_initial_lr.png")
    plot_policy(arms, out / "policy.png")
    lines = ["# Learning study", "", "| arm | flags | updates | first 10 updates | last 10 updates | wall time |",
             "|---|---|---|---|---|---|"]
    for arm, data in arms.items():
        curve = per_update(data["episodes"], len(data["updates"]))
        seconds = sum(400 / u["steps_per_second"] for u in data["updates"])  # 4 envs x 100 steps each
        lines.append(f"| {arm} | {describe(data['args'])} | {len(curve)} | {np.nanmean(curve[:10]):.4f} | "
                     f"{np.nanmean(curve[-10:]):.4f} | {seconds / 60:.0f} min |")
    lines += ["", f"Test of {args.checkpoint}.pt: final validation loss, mean ± standard error over the seeds; "
              "differences are paired "
              "over the same seeds (negative: the learned schedule is better; **better** means by more than two "
              "standard errors).", "", tables(arms)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/learning_curves.png, by_initial_lr.png, policy.png and results.md")


if __name__ == "__main__":
    main()
