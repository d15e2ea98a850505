"""Every figure of the project: schedules against child steps, and a controller's training progress."""
import numpy as np

from utils import atomic_write

DISCRETE_ACTIONS = {"action_0_frequency": "0: multiply by range", "action_1_frequency": "1: divide by range",
                    "action_2_frequency": "2: keep"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def readable_log_axis(ax):
    """Label minor ticks too when a log axis spans less than about a decade (else it shows one label
    or none)."""
    from matplotlib.ticker import FuncFormatter
    low, high = ax.get_ylim()
    if low > 0 and high / low < 20:
        label = FuncFormatter(lambda value, _: f"{value:.3g}")
        ax.yaxis.set_major_formatter(label)
        ax.yaxis.set_minor_formatter(label)


def plot_schedules(curves, path, title):
    """Three panels against child steps: log training loss, log validation loss, learning rate.

    ``curves`` maps a method name to a dict with lists ``step``, ``train_loss``, ``val_loss``, ``lr``
    (one run), or to such lists stacked over runs (drawn as their mean with a shaded min-max band).
    The value at step t is the one observed after the block that ends at t (step 0: the fresh child),
    so the learning rate is drawn as a step that holds over the block before t.
    """
    from matplotlib.patches import Patch
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    banded = False
    for name, curve in curves.items():
        step = np.asarray(curve["step"])
        for ax, key in zip(axes, ("train_loss", "val_loss", "lr")):
            values = np.atleast_2d(np.asarray(curve[key], dtype=float))
            style = "steps-pre" if key == "lr" else "default"
            line, = ax.plot(step, values.mean(0), label=name, drawstyle=style)
            if len(values) > 1:
                banded = True
                ax.fill_between(step, values.min(0), values.max(0), color=line.get_color(), alpha=0.15,
                                step="pre" if key == "lr" else None)
    for ax, label in zip(axes, ("training loss (mean of the block)", "validation loss", "learning rate")):
        ax.set_yscale("log")
        ax.set_xlabel("child training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        readable_log_axis(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    if banded:
        handles.append(Patch(color="gray", alpha=0.3))
        labels.append("shaded: min-max over the seeds")
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(labels) + 2) // 3), 1, 1))
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def running_mean(values, window):
    """Mean of the last ``window`` values at each point (fewer at the start), NaNs skipped."""
    values = np.asarray(values, dtype=float)
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        recent = values[max(0, i - window + 1):i + 1]
        if np.isfinite(recent).any():
            out[i] = np.nanmean(recent)
    return out


def plot_training(episodes, updates, path, title, window):
    """A controller's training progress, one quantity per panel: per episode its final validation
    loss (with a running mean over ``window`` episodes), learning rates and return; per PPO update
    what the policy did (Gaussian mean and std, and where its samples fell, or the discrete action
    frequencies) and PPO's statistics."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 4, figsize=(20, 11), gridspec_kw=dict(left=0.05, right=0.99, bottom=0.05, top=0.94,
                                                                       wspace=0.25, hspace=0.22))
    steps = [e["timesteps"] for e in episodes]
    ax = axes[0, 0]
    tasks = list(dict.fromkeys(e.get("task") for e in episodes))  # a task mix: one colour per task
    for task in tasks:
        mine = [e for e in episodes if e.get("task") == task]
        final = [np.nan if e["final_val_loss"] is None else e["final_val_loss"] for e in mine]
        at = [e["timesteps"] for e in mine]
        dots, = ax.plot(at, final, ".", alpha=0.4, label="episode" if len(tasks) == 1 else None)
        ax.plot(at, running_mean(final, window), color=dots.get_color(),
                label=f"running mean of {window}" if len(tasks) == 1 else task)
    ax.set(yscale="log", ylabel="final validation loss (lower is better)")
    if episodes:
        ax.legend(fontsize=8 if len(tasks) > 1 else None)
    ax = axes[0, 1]
    for key, label in (("initial_lr", "initial"), ("lr_geomean", "geometric mean"), ("final_lr", "final")):
        ax.plot(steps, [e.get(key, np.nan) for e in episodes], ".", alpha=0.5, label=label)
    ax.set(yscale="log", ylabel="learning rate of the episode")
    ax.legend()
    axes[0, 2].plot(steps, [e["return"] for e in episodes], ".", alpha=0.5)
    axes[0, 2].set(ylabel="episode return")

    at = [u["timesteps"] for u in updates]
    series = lambda key: [u.get(key, np.nan) for u in updates]
    ax = axes[0, 3]
    if updates and "policy_mean" in updates[0]:
        ax.plot(at, series("policy_mean"), label="mean of the Gaussian (over the rollout)")
        ax.plot(at, series("policy_std"), label="std of the Gaussian")
        ax.set(ylabel="policy")
        ax.legend()
        ax = axes[1, 0]
        for key in ("action_below", "action_inside", "action_above"):
            ax.plot(at, series(key), label=key.replace("action_", "sampled actions "))
        ax.set(ylabel="fraction of sampled actions", ylim=(0, 1))
    else:
        for key in sorted(k for k in (updates[0] if updates else {}) if k.endswith("_frequency")):
            ax.plot(at, series(key), label=DISCRETE_ACTIONS[key])
        ax.set(ylabel="action frequency", ylim=(0, 1))
        axes[1, 0].axis("off")
    ax.legend()
    for ax, key, label in ((axes[1, 1], "policy_loss", "policy loss"), (axes[1, 2], "value_loss", "value loss"),
                           (axes[1, 3], "entropy", "policy entropy"), (axes[2, 0], "approx_kl", "approx KL"),
                           (axes[2, 1], "clip_fraction", "clip fraction"),
                           (axes[2, 2], "explained_variance", "explained variance of the critic"),
                           (axes[2, 3], "steps_per_second", "controller steps per second")):
        ax.plot(at, series(key))
        ax.set(ylabel=label)
    for ax in axes.flat:
        ax.set_xlabel("controller steps")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
