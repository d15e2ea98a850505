"""The generalist study's held-out tables from compare.py's summary.json: each generalist's final
validation loss from 1e-3, its ratio to the best-of-grid cosine and its difference to its replay per
task, with the score that picks the arm to ship (arms E, E1, E2: one arm, three training seeds), and
its difference to its pooled replay (its schedule on the other tasks); the
methods users pick instead, a row per task, from 1e-3 and the best of their grids; each generalist's
rate (geometric mean over the seeds) at fractions of the run, per task. Given compare.py's runs.jsonl
too, how much each generalist's rate differs between the seeds of one task, and how much any
controller could gain on a task by picking its schedule per run rather than one for every run.

    python experiments/generalist_table.py runs/compare/summary.json [runs/compare/runs.jsonl] > table.md
"""
import json
import sys

import numpy as np

START = "1e-3"
BASELINE_COLUMNS = (  # (header, row name or (kind, start) picked over the start rates)
    ("shipped (one task)", f"alrs:fa-mnist_mlp_stable@{START}"),
    ("constant", f"constant@{START}"), ("cosine", f"cosine@{START}"), ("ReduceLROnPlateau", f"plateau@{START}"),
    ("OneCycle", f"onecycle@{START}"), ("best step decay", ("step_decay", START)),
    ("best cosine (start)", ("cosine", None)), ("schedule-free AdamW, best lr", ("schedulefree", None)),
    ("Prodigy", "prodigy"),
)


def generalists(summary):
    """The alrs rows from START of each generalist arm that was run (controllers named generalist-<arm>)."""
    names = {name for task in summary["tasks"].values() for name in task["rows"]}
    return sorted(name for name in names if name.startswith("alrs:generalist-") and name.endswith(f"@{START}"))


def label(method):
    """The controller's name in a row name: alrs:generalist-E@1e-3 -> generalist-E."""
    return method.split(":")[1].split("@")[0]


def mean_loss(rows, name):
    """The row's mean final validation loss, or None when it was not run."""
    return rows.get(name, {}).get("final_val_loss", {}).get("mean")


def cell(rows, name):
    """mean ± standard error of the final validation loss, failed runs counted, or – when not run."""
    row = rows.get(name)
    if row is None or row["final_val_loss"]["mean"] is None:
        return "–"
    loss = row["final_val_loss"]
    text = f"{loss['mean']:.3f} ± {loss['sem']:.3f}" if loss["sem"] is not None else f"{loss['mean']:.3f}"
    return text + (f" ({row['failed']}/{loss['runs'] + loss['diverged']} failed)" if row["failed"] else "")


def best(rows, kind, start):
    """The row of ``kind`` with the lowest mean final validation loss (from ``start`` only, if given)."""
    names = [n for n, r in rows.items() if r["kind"] == kind and r["final_val_loss"]["mean"] is not None
             and (start is None or n.endswith(f"@{start}"))]
    return min(names, key=lambda n: rows[n]["final_val_loss"]["mean"], default=None)


def baselines_table(summary):
    """The methods users pick instead, a row per task."""
    lines = ["| task | " + " | ".join(h for h, _ in BASELINE_COLUMNS) + " |",
             "|---" * (len(BASELINE_COLUMNS) + 1) + "|"]
    for task, content in summary["tasks"].items():
        rows, cells = content["rows"], []
        for _, column in BASELINE_COLUMNS:
            if isinstance(column, tuple):
                name = best(rows, *column)
                start = "" if name is None or column[1] else f" ({name.split('@')[1]})"
                cells.append(("–" if name is None else cell(rows, name)) + start)
            else:
                cells.append(cell(rows, column))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)  # of the run, where the schedules table reads the rate


def schedules_table(summary):
    """Per generalist arm and task, its rate from 1e-3 at FRACTIONS of the run: whether it acts
    differently on different tasks."""
    lines = ["| arm | task | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |",
             "|---|---" + "|---" * len(FRACTIONS) + "|"]
    for name in generalists(summary):
        for task, content in summary["tasks"].items():
            rates = content["rows"].get(name, {}).get("lr_geomean")
            if rates:
                picked = [rates[round(f * (len(rates) - 1))] for f in FRACTIONS]
                lines.append(f"| {label(name)} | {task} | "
                             + " | ".join(f"{r:.1e}" for r in picked) + " |")
    return "\n".join(lines)


def pooled_table(summary):
    """Per generalist and task from 1e-3: the controller minus its pooled replay (its schedule on the
    set's other tasks, played back open loop), paired, mean ± SE; then on how many tasks it is better
    and worse by more than two standard errors. Better: its schedules for different tasks pay."""
    tasks = list(summary["tasks"])
    lines = ["| arm | " + " | ".join(tasks) + " | better | worse |", "|---" * (len(tasks) + 3) + "|"]
    for name in generalists(summary):
        cells, better, worse = [], 0, 0
        for content in summary["tasks"].values():
            diff = content["differences"].get(name, {}).get("pooled_replay", {}).get("difference")
            if diff is None or diff["sem"] is None:
                cells.append("–")
                continue
            better += diff["mean"] < -2 * diff["sem"]
            worse += diff["mean"] > 2 * diff["sem"]
            cells.append(f"{diff['mean']:+.3f} ± {diff['sem']:.3f}")
        if set(cells) != {"–"}:
            lines.append(f"| {label(name)} | " + " | ".join(cells) + f" | {better} | {worse} |")
    return "\n".join(lines)


def ratio_to_best_cosine(content, name):
    """The row's mean final validation loss over the best-of-grid cosine's (None if either is missing)."""
    rows = content["rows"]
    loss, cosine = mean_loss(rows, name), best(rows, "cosine", None)
    return None if loss is None or cosine is None else loss / mean_loss(rows, cosine)


def arm_score(summary, name):
    """The selection score of a controller row: its mean ratio to the best-of-grid cosine over the
    tasks, or None unless it was run, without a failure, on every task."""
    ratios = [ratio_to_best_cosine(content, name) for content in summary["tasks"].values()]
    failed = any(content["rows"].get(name, {}).get("failed") for content in summary["tasks"].values())
    return None if failed or None in ratios else sum(ratios) / len(ratios)


def bar_table(summary):
    """Per generalist and task from 1e-3: the mean final validation loss, its ratio to the best-of-grid
    cosine and the difference to its replay (mean ± SE, paired); then the mean ratio (the selection
    score) and the bar's checks passed. An arm whose name ends in a digit is another training seed of
    the arm before the digits."""
    tasks = list(summary["tasks"])
    lines = ["| arm | " + " | ".join(tasks) + " | mean ratio | checks passed |",
             "|---" * (len(tasks) + 3) + "|"]
    families = {}
    for name in generalists(summary):
        arm = label(name)
        cells, passed, checked = [], 0, 0
        for content in summary["tasks"].values():
            ratio = ratio_to_best_cosine(content, name)
            replay = content["differences"].get(name, {}).get("replay", {}).get("difference")
            checks = content["bar"].get(arm, {})
            passed += sum(value is True for value in checks.values())
            checked += sum(value is not None for value in checks.values())
            cells.append("–" if ratio is None else f"{mean_loss(content['rows'], name):.3f} ({ratio:.2f}×)" + (
                f"; {replay['mean']:+.3f} ± {replay['sem']:.3f}" if replay and replay["sem"] is not None else ""))
        score = arm_score(summary, name)
        families.setdefault(arm.rstrip("0123456789"), []).append(score)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {'–' if score is None else f'{score:.3f}'} "
                     f"| {passed}/{checked} |")
    lines.append("")
    for family, scores in families.items():
        if len(scores) > 1:
            known = [s for s in scores if s is not None]
            mean = f"{sum(known) / len(known):.3f}" if len(known) == len(scores) else "–"
            lines.append(f"{family} over {len(scores)} training seeds: mean ratio {mean} "
                         f"({', '.join('–' if s is None else f'{s:.3f}' for s in scores)})")
    return "\n".join(lines)


def seed_spread_table(records):
    """Per generalist and task from 1e-3: how much its rate differs between the seeds, as a factor:
    exp of the standard deviation over seeds of log lr, averaged over the run's actions (1.00: the same
    schedule on every seed; a replay can only lose to a controller that acts differently per seed)."""
    curves = {}
    for r in records:
        if r["method"].startswith("alrs:generalist-") and r["method"].endswith(f"@{START}") and not r["diverged"]:
            curves.setdefault((label(r["method"]), r["task"]), []).append(np.log(r["lr"]))
    lines = ["| arm | task | seeds | spread (×) |", "|---|---|---|---|"]
    for (arm, task), logs in sorted(curves.items()):
        steps = min(len(log) for log in logs)
        spread = np.exp(np.std([log[:steps] for log in logs], axis=0).mean())
        lines.append(f"| {arm} | {task} | {len(logs)} | {spread:.3f} |")
    return "\n".join(lines)


OPEN_LOOP = ("constant", "cosine", "onecycle", "step_decay", "replay", "pooled_replay")  # kinds whose rates ignore the run


def headroom_table(summary, records):
    """Per task: the open-loop schedule that is best on average over the seeds, against the best
    open-loop schedule of each seed (mean over the seeds). Their difference bounds what acting on
    the run can gain over one fixed schedule: a controller beats its replay by more than two
    standard errors (last column) only where this headroom is larger. It is an upper bound: the
    per-seed minimum also picks each seed's luck."""
    losses = {}  # (task, method) -> {seed: final validation loss, inf where it diverged}
    for r in records:
        if r["kind"] in OPEN_LOOP:
            losses.setdefault((r["task"], r["method"]), {})[r["seed"]] = (
                np.inf if r["diverged"] else r["final_val_loss"])
    lines = ["| task | open-loop schedules | best on average | best per seed | headroom "
             "| 2 SE, controller − replay (median) |", "|---|---|---|---|---|---|"]
    for task in sorted({task for task, _ in losses}):
        seeds = sorted(set().union(*(s for (t, _), s in losses.items() if t == task)))
        schedules = {m: s for (t, m), s in losses.items() if t == task and len(s) == len(seeds)}  # every seed
        table = np.array([[schedules[m][s] for s in seeds] for m in schedules])  # (schedules, seeds)
        best_row = table.mean(1).argmin()
        fixed, per_seed = table[best_row].mean(), table.min(0).mean()
        differences = summary["tasks"][task]["differences"]
        twice_se = [2 * diff["sem"] for name in generalists(summary)
                    if (diff := differences.get(name, {}).get("replay", {}).get("difference"))]
        lines.append(f"| {task} | {len(table)} | {list(schedules)[best_row]}: {fixed:.3f} | {per_seed:.3f} "
                     f"| {fixed - per_seed:.4f} ({(fixed - per_seed) / fixed:.1%}) "
                     f"| {np.median(twice_se) if twice_se else float('nan'):.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    summary = json.load(open(sys.argv[1]))
    print("\n\n".join([bar_table(summary), pooled_table(summary), baselines_table(summary),
                       schedules_table(summary)]))
    if len(sys.argv) > 2:
        records = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
        print("\n" + seed_spread_table(records) + "\n\n" + headroom_table(summary, records))
