"""The tuning-free study's bar, from compare.py's runs.jsonl: for each controller and each start rate,
nothing tuned, on the held-out tasks:

1. it never fails (diverges or ends at chance) on a seed where a constant rate from that start does not;
2. the geometric mean over the tasks of its final validation loss over the best-of-grid cosine's
   (the best of cosine from 1e-2, 1e-3 and 1e-4 on that task) is at most 1.00 (beside it, the same over
   cosine from every start that ran, e.g. from 3e-2 and 1e-1 too: whether that grid's top was too low);
3. on the geometric mean over the tasks it beats (ratio < 1) cosine, constant, ReduceLROnPlateau and
   OneCycle from the same start, Prodigy, and schedule-free AdamW at its default rate (2.5e-3);
4. it beats its pooled replay (from the same start) by more than 2 SE on at least half the tasks
   (its same-task replay, the other seeds' schedule on that task, beside it: not part of the bar).
Stretch: within 2% of the best-of-grid schedule-free AdamW on the geometric mean (on a schedule-free
child, its constant rates are schedule-free AdamW's too: arm J's rivals on its schedule-free children).
Then, per task, the controller and cosine from each start and the best-of-grid schedule-free AdamW,
each over the best-of-grid cosine: how much the start rate matters to each; the bar's ratios by
the child's optimizer (Prodigy and schedule-free AdamW replace it, an SGD child's most of all); and for
a controller run on other optimizers' variants of the tasks (arm J), its ratios to what a user of the
optimizer each seed drew could pick instead on the same child.

    python experiments/tuning_free_table.py runs/tuning-free/compare/all/runs.jsonl > bar.md
"""
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from compare_report import BAR_START, START_LRS, failed, lr_text, paired_difference  # noqa: E402
from utils import read_jsonl  # noqa: E402

SCHEDULEFREE_DEFAULT = "schedulefree@2.5e-3"
GRID = tuple(lr_text(start) for start in START_LRS)  # the starts of the bar's best-of-grid cosine
WIDER = "/ best cosine, every start"  # the best cosine of every start that ran, beyond GRID too
RIVALS = ("cosine", "constant", "plateau", "onecycle")  # from the same start as the controller


def by_task(records):
    """{task: {method: {seed: record}}} of the finished runs."""
    runs = defaultdict(lambda: defaultdict(dict))
    for record in records:
        runs[record["task"]][record["method"]][record["seed"]] = record
    return runs


def mean_loss(runs):
    """The mean final validation loss of a method's runs ({seed: record}); inf when one failed to finish
    (a diverged run has no loss: the method lost that task)."""
    losses = [math.inf if r["final_val_loss"] is None else r["final_val_loss"] for r in runs.values()]
    return float(np.mean(losses)) if losses else None


def geometric_mean_ratio(tasks, numerator, denominator):
    """The geometric mean over ``tasks`` of numerator(task) / denominator(task); None when any is missing."""
    ratios = [numerator(t) / denominator(t) for t in tasks if numerator(t) is not None and denominator(t)]
    return float(np.exp(np.mean(np.log(ratios)))) if len(ratios) == len(tasks) and ratios else None


def means_by_start(task_runs, kind):
    """{start: mean final loss} of a kind's rows that have runs, e.g. {"1e-2": 0.41, "1e-3": 0.38}."""
    means = {name.split("@")[-1]: mean_loss(runs) for name, runs in task_runs.items() if name.split("@")[0] == kind}
    return {start: mean for start, mean in means.items() if mean is not None}


def best_of(task_runs, kind, starts=None):
    """The lowest mean final loss among a kind's rows from ``starts`` (default: every start that ran),
    or None: its best of grid."""
    means = means_by_start(task_runs, kind)
    return min((mean for start, mean in means.items() if starts is None or start in starts), default=None)


def best_start(task_runs, kind):
    """The start of a kind's row with the lowest mean final loss, e.g. "1e-2" (None: no row finished)."""
    means = means_by_start(task_runs, kind)
    return min(means, key=means.get, default=None)


def best_schedulefree(task, task_runs):
    """The best of grid of schedule-free AdamW at a fixed rate: its schedulefree@LR rows (it replaces the
    child's optimizer, keeping the weight decay), and on a schedule-free child its constant@LR rows too
    (the child's own optimizer and settings at a constant rate: arm J's rivals)."""
    kinds = ("schedulefree", "constant") if child_optimizer(task) == "schedulefree" else ("schedulefree",)
    return min((loss for kind in kinds if (loss := best_of(task_runs, kind)) is not None), default=None)


def schedulefree_default(task, task_runs):
    """The row of schedule-free AdamW at its default rate: SCHEDULEFREE_DEFAULT, or on a schedule-free
    child without that row, its constant rate at 2.5e-3."""
    if SCHEDULEFREE_DEFAULT not in task_runs and child_optimizer(task) == "schedulefree":
        return "constant@" + SCHEDULEFREE_DEFAULT.split("@")[1]
    return SCHEDULEFREE_DEFAULT


def controllers(runs):
    """The labels of the controllers with alrs rows."""
    return sorted({name.split(":")[1].split("@")[0] for task in runs.values() for name in task
                   if name.startswith("alrs:")})


def bar(runs, label, start):
    """The bar's figures for one controller from one start: failures, ratios and pooled-replay wins."""
    tasks = sorted(runs)
    own = f"alrs:{label}@{start}"
    loss = lambda name: lambda task: mean_loss(runs[task][name]) if runs[task].get(name) else None
    constant = lambda task, seed: runs[task].get(f"constant@{start}", {}).get(seed)
    failures_beyond_constant = sum(failed(record) and (constant(task, seed) is None or not failed(constant(task, seed)))
                                   for task in tasks for seed, record in runs[task].get(own, {}).items())
    figures = {"failures where constant has none": failures_beyond_constant,
               "/ best-of-grid cosine": geometric_mean_ratio(tasks, loss(own), lambda t: best_of(runs[t], "cosine", GRID)),
               WIDER: geometric_mean_ratio(tasks, loss(own), lambda t: best_of(runs[t], "cosine"))}
    rivals = {**{f"/ {kind}, same start": loss(f"{kind}@{start}") for kind in RIVALS}, "/ prodigy": loss("prodigy"),
              f"/ {SCHEDULEFREE_DEFAULT}": lambda task: loss(schedulefree_default(task, runs[task]))(task)}
    for column, rival in rivals.items():
        figures[column] = geometric_mean_ratio(tasks, loss(own), rival)
    pooled = replay_wins(runs, own, f"pooled_replay:{label}@{start}")
    figures["beats pooled replay (tasks)"] = wins_text(pooled, len(tasks))
    figures["beats same-task replay (tasks)"] = wins_text(replay_wins(runs, own, f"replay:{label}@{start}"), len(tasks))
    figures["/ best-of-grid schedule-free"] = geometric_mean_ratio(tasks, loss(own),
                                                                   lambda t: best_schedulefree(t, runs[t]))
    figures["passes"] = (failures_beyond_constant == 0 and (figures["/ best-of-grid cosine"] or math.inf) <= 1.0
                         and all((figures[column] or math.inf) < 1 for column in rivals)
                         and 2 * (pooled or (0, 0))[0] >= len(tasks))
    return figures


def replay_wins(runs, own, replay):
    """(wins, replayed): on how many tasks the controller's rows ``own`` beat the replay's rows ``replay``
    by more than 2 SE, paired by seed, and on how many the replay ran (a task without its runs counts as
    not beaten); None when no task has them."""
    replayed = [task for task in runs if runs[task].get(replay)]
    wins = 0
    for task in replayed:
        diff = paired_difference(*({s: r["final_val_loss"] if r["final_val_loss"] is not None else math.nan
                                    for s, r in side.items()} for side in (runs[task].get(own, {}), runs[task][replay])))
        wins += diff is not None and diff["mean"] < -2 * diff["sem"]
    return (wins, len(replayed)) if replayed else None


def wins_text(wins, tasks):
    """A replay column's cell: "3 of 24", "0 of 24 (1 replayed)" when the replay ran on fewer tasks, or "not run"."""
    if wins is None:
        return "not run"
    won, replayed = wins
    return f"{won} of {tasks}" + (f" ({replayed} replayed)" if replayed < tasks else "")


def ratio_text(loss, reference):
    """loss / reference as a table cell: "1.023", "inf" for a failed method, "–" when either is missing."""
    return "–" if loss is None or not reference else f"{loss / reference:.3f}"


def per_task(runs, label, drawn=None):
    """A markdown table: per task, the controller and cosine from each start, the best-of-grid
    schedule-free AdamW and the best cosine of every start that ran (with its start), over the best-of-grid
    cosine (whose loss the last column gives). With ``drawn`` ({task: its runs with the optimizer the seed
    drew}, see drawn_runs), cosine is that optimizer's."""
    starts = [lr_text(start) for start in START_LRS]
    lines = [f"| task | {label} from " + " / ".join(starts) + " | cosine from " + " / ".join(starts)
             + " | best schedule-free | best cosine, every start | best-of-grid cosine (loss) |", "|---|---|---|---|---|---|"]
    for task in sorted(runs):
        cosine_runs = drawn[task] if drawn else runs[task]
        reference = best_of(cosine_runs, "cosine", GRID)
        cells = [" / ".join(ratio_text(mean_loss(source.get(f"{kind}@{start}", {})) if source.get(
            f"{kind}@{start}") else None, reference) for start in starts)
            for kind, source in ((f"alrs:{label}", runs[task]), ("cosine", cosine_runs))]
        best_sf = [v for v in (best_schedulefree(task, runs[task]), best_of(drawn[task], "schedulefree") if drawn else None)
                   if v is not None]
        cells.append(ratio_text(min(best_sf, default=None), reference))
        start = best_start(cosine_runs, "cosine")
        cells.append(ratio_text(best_of(cosine_runs, "cosine"), reference) + (f" ({start})" if start else ""))
        cells.append("–" if reference is None else f"{reference:.3f}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def child_optimizer(task):
    """The optimizer a task's name says its child trains with (tasks.Task.name appends it; Adam: nothing)."""
    return next((name for name in ("adamw", "sgd", "schedulefree") if name in task.split("_")), "adam")


def by_optimizer(runs, label):
    """A markdown table: per child optimizer, the controller over the best-of-grid cosine from each
    start, and from the bar's start over Prodigy, schedule-free AdamW at 2.5e-3 and at its best rate, and
    the best cosine of every start that ran."""
    starts, bar_start = [lr_text(start) for start in START_LRS], lr_text(BAR_START)
    lines = ["| child's optimizer | tasks | / best-of-grid cosine from " + " / ".join(starts)
             + f" | from {bar_start}: / prodigy | / {SCHEDULEFREE_DEFAULT} | / best-of-grid schedule-free | {WIDER} |",
             "|---|---|---|---|---|---|---|"]
    cell = lambda value: "–" if value is None else f"{value:.3f}"
    for name in ("adam", "adamw", "sgd", "schedulefree"):
        group = {task: task_runs for task, task_runs in runs.items() if child_optimizer(task) == name}
        if group:
            figures = {start: bar(group, label, start) for start in starts}
            own = figures[bar_start]
            lines.append(f"| {name} | {len(group)} | " + " / ".join(cell(figures[s]["/ best-of-grid cosine"]) for s in starts)
                         + " | " + " | ".join(cell(own[k]) for k in ("/ prodigy", f"/ {SCHEDULEFREE_DEFAULT}",
                                                                    "/ best-of-grid schedule-free", WIDER)) + " |")
    return lines


def child_model(task):
    """A task's name less its optimizer and that optimizer's settings: the same child, data and horizon,
    whichever optimizer trains it (arm J's schedule-free variant of a held-out seed and the seed itself)."""
    optimizer_token = lambda token: token in ("adamw", "sgd", "schedulefree") or token.startswith(("wd", "b1-", "b2-"))
    return "_".join(token for token in task.split("_") if not optimizer_token(token))


def drawn_runs(all_runs, tasks):
    """{task: the runs of the same child with the optimizer its seed drew} (the task with cosine rows whose
    child_model is the same), for tasks that are other optimizers' variants (arm J's); {} when none is."""
    drawn = {child_model(task): task_runs for task, task_runs in all_runs.items() if best_of(task_runs, "cosine")}
    if all(best_of(all_runs[task], "cosine") for task in tasks):
        return {}  # it ran on the drawn optimizers
    return {task: drawn[child_model(task)] for task in tasks if child_model(task) in drawn}


def against_drawn_optimizer(runs, label, drawn):
    """A markdown table, for a controller run on other optimizers' variants of the held-out tasks (arm J):
    from each start, the geometric mean over the tasks of its loss over what a user of the optimizer the
    seed drew could pick instead on the same child: the best-of-grid cosine, cosine from the same start,
    Prodigy, the best-of-grid schedule-free AdamW (of both variants), and the other controllers that ran
    on all of those children, from the same start; then the first and the fourth by the optimizer the seed drew."""
    tasks, starts = sorted(drawn), [lr_text(start) for start in START_LRS]
    ran_on_all = lambda other: all(any(name.startswith(f"alrs:{other}@") for name in drawn[task]) for task in tasks)
    others = [other for other in controllers({task: drawn[task] for task in tasks}) if other != label and ran_on_all(other)]
    loss = lambda task_runs, name: mean_loss(task_runs[name]) if task_runs.get(name) else None
    columns = ["/ best-of-grid cosine", "/ cosine, same start", "/ prodigy", "/ best-of-grid schedule-free",
               *(f"/ {other}, same start" for other in others)]
    lines = [f"{label} on {len(tasks)} tasks against the same children with the optimizer their seed drew:", "",
             "| from | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    best_sf = lambda task: min((v for v in (best_schedulefree(task, runs[task]), best_of(drawn[task], "schedulefree"))
                                if v is not None), default=None)
    rivals_of = lambda start: [
        lambda task: best_of(drawn[task], "cosine", GRID), lambda task: loss(drawn[task], f"cosine@{start}"),
        lambda task: loss(drawn[task], "prodigy"), best_sf,
        *(lambda task, other=other: loss(drawn[task], f"alrs:{other}@{start}") for other in others)]
    for start in starts:
        cells = [geometric_mean_ratio(tasks, lambda task: loss(runs[task], f"alrs:{label}@{start}"), rival)
                 for rival in rivals_of(start)]
        lines.append(f"| {start} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines += ["", "| optimizer the seed drew | tasks | / its best-of-grid cosine from " + " / ".join(starts)
              + f" | from {lr_text(BAR_START)}: / best-of-grid schedule-free |", "|---|---|---|---|"]
    drawn_optimizer = lambda task: child_optimizer(next(iter(next(iter(drawn[task].values())).values()))["task"])
    for name in ("adam", "adamw", "sgd", "schedulefree"):
        group = [task for task in tasks if drawn_optimizer(task) == name]
        if group:
            mine = lambda start: lambda task: loss(runs[task], f"alrs:{label}@{start}")
            ratios = [geometric_mean_ratio(group, mine(start), rivals_of(start)[0]) for start in starts]
            sf = geometric_mean_ratio(group, mine(lr_text(BAR_START)), best_sf)
            lines.append(f"| {name} | {len(group)} | " + " / ".join("–" if r is None else f"{r:.3f}" for r in ratios)
                         + f" | {'–' if sf is None else f'{sf:.3f}'} |")
    return lines + [""]


def table(all_runs):
    """Per controller, on the tasks it ran (arm J's children are other tasks: schedule-free variants):
    the bar (a row per start rate, a column per figure) and the per-task table."""
    lines = []
    for label in controllers(all_runs):
        runs = {task: task_runs for task, task_runs in all_runs.items()
                if any(name.startswith(f"alrs:{label}@") for name in task_runs)}
        rows = {lr_text(start): bar(runs, label, lr_text(start)) for start in START_LRS}
        columns = list(next(iter(rows.values())))
        lines += [f"## {label} on {len(runs)} tasks", "", "| from | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for start, figures in rows.items():
            cells = [f"{v:.3f}" if isinstance(v, float) else "–" if v is None else str(v) for v in figures.values()]
            lines.append(f"| {start} | " + " | ".join(cells) + " |")
        drawn = drawn_runs(all_runs, runs)
        against = ["", *against_drawn_optimizer(runs, label, drawn)] if drawn else []
        lines += [*against, "", *per_task(runs, label, drawn), "", *by_optimizer(runs, label), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(by_task(read_jsonl(sys.argv[1]))))
