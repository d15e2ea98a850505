"""Every figure of the project: schedules against child steps, and a controller's training progress."""
import numpy as np

from utils import atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_schedules(curves, path, title):
    """Three panels against child steps: log training loss, log validation loss, learning rate.

    ``curves`` maps a method name to a dict with lists ``step``, ``train_loss``, ``val_loss``, ``lr``
    (one run), or to such lists stacked over runs (drawn as mean with a min-max band).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, curve in curves.items():
        step = np.asarray(curve["step"])
        for ax, key in zip(axes, ("train_loss", "val_loss", "lr")):
            values = np.atleast_2d(np.asarray(curve[key], dtype=float))
            line, = ax.plot(step, values.mean(0), label=name)
            if len(values) > 1:
                ax.fill_between(step, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    for ax, label in zip(axes, ("training loss", "validation loss", "learning rate")):
        ax.set_yscale("log")
        ax.set_xlabel("child training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_training(episodes, updates, path, title):
    """Training progress of a controller: episode final validation loss, PPO losses, KL/clip."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if episodes:
        axes[0].plot([e["timesteps"] for e in episodes], [e["final_val_loss"] for e in episodes], ".", alpha=0.5)
        axes[0].set_yscale("log")
    axes[0].set(xlabel="controller steps", ylabel="final validation loss of each episode")
    for key in ("policy_loss", "value_loss", "entropy"):
        axes[1].plot([u["timesteps"] for u in updates], [u[key] for u in updates], label=key)
    axes[1].set(xlabel="controller steps", ylabel="PPO loss")
    axes[1].legend()
    for key in ("approx_kl", "clip_fraction", "explained_variance"):
        axes[2].plot([u["timesteps"] for u in updates], [u[key] for u in updates], label=key)
    axes[2].set(xlabel="controller steps")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
