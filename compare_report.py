"""compare.py's report: the statistics over seeds (paired differences, the bar's checks and verdict)
and the report of every finished run (results.md, summary.json, compare.png). Pure functions of the
records in runs.jsonl, so a report can be redrawn without running anything."""
import math

import numpy as np

import stats
from plots import _pyplot
from stats import summarize, verdict
from utils import atomic_write, json_floats, save_json

UPDATE_FREQ = 10  # steps between the controller's actions, and between ReduceLROnPlateau's checks
START_LRS = (1e-2, 1e-3, 1e-4)
BAR_START = 1e-3  # the bar's start: the controller from the default rate, untuned
KINDS = ("alrs", "replay", "pooled_replay", "constant", "step_decay", "cosine", "onecycle", "plateau", "schedulefree",
         "prodigy")
CONTROLLED = KINDS[:3]  # the controller's rows, one per controller
BASELINES = KINDS[3:]
METRICS = ("final_val_loss", "test_loss", "test_accuracy")  # of each run
CHANCE_FRACTION = 0.95  # a final validation loss above this fraction of ln(classes) is "at chance"


def lr_text(lr):
    """A rate as the method names write it: 1e-3, 3e-4, 2.5e-2."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


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
