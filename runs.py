"""The runs/ folder: experiment ids and folders, checkpoint files, the training state, baseline folders."""
import math
import os
import re
import time
from pathlib import Path

from data import DEFAULT_VAL_SIZE, dataset_name
from environment import EnvConfig
from utils import UserError, load_checkpoint, new_folders, read_jsonl, remove_empty, save_checkpoint, save_json

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # ids are plain names, never paths
DEFAULT_SEED = 0
SEED_STRIDE = 1000  # --seed s owns the seeds s * SEED_STRIDE + i, i < SEED_STRIDE (training and test children)
BEST_WINDOW = 16  # best.pt: the lowest mean final validation loss over this many episodes per initial rate
UNTRAINED_CHECKPOINT = "step-0000000_untrained.pt"  # the initial policy: test.py's control
TRAINING_STATE = "latest.pt"
TRAINING_STATE_KEYS = ("format", "agent", "normalizer", "optimizer", "env", "torch_rng", "update", "episodes",
                       "best_val_loss", "recent_finals", "obs", "done", "device", "timesteps")


def new_run_dir(args):
    """A fresh runs/<dataset>_<child>_<continuous|discrete>_<time>[_<suffix>] holding args.json (a task
    mix's id starts with mix<number of tasks>, a run on the family with family<environments>)."""
    kind = "discrete" if args.discrete else "continuous"
    setting = f"mix{len(args.task)}" if getattr(args, "task", None) else f"{dataset_name(args.dataset)}_{args.architecture}"
    if getattr(args, "family", 0):
        setting = f"family{args.family}" + (f"-mix{len(args.task)}" if args.task else "")
    run_id = f"{setting}_{kind}_{time.strftime('%Y%m%d-%H%M%S')}"
    if args.tb_suffix:
        run_id += f"_{args.tb_suffix}"
    run_dir = Path(args.runs_dir) / run_id
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(args.runs_dir) / f"{run_id}-{suffix}"
    run_dir.mkdir(parents=True)
    save_json(run_dir / "args.json", vars(args))
    return run_dir


def check_writable(folder):
    """Check, before any work, that ``folder`` can be created and written to; a UserError says why it
    cannot be. The folders the check creates are removed again, so a start that fails later leaves none."""
    folder = Path(folder)
    created = new_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {folder}: {error.strerror or error}") from None
    finally:
        remove_empty(created)


def list_runs(runs_dir):
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if (p / "args.json").exists())


def find_run(runs_dir, run_id):
    """The folder of experiment ``run_id``; a missing one is a UserError listing the ones there are."""
    path = Path(runs_dir) / run_id
    if not (path / "args.json").exists():
        known = list_runs(runs_dir)
        raise UserError(f"no experiment {run_id!r} in {runs_dir}/; experiments there: "
                        f"{', '.join(known) if known else 'none (run train.py first)'}")
    return path


def checkpoint_path(run_dir, name):
    """checkpoints/best.pt, latest.pt or a named file; a missing one lists those that exist."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / (name if name.endswith(".pt") else f"{name}.pt")
    if not path.exists():
        known = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
        why = f" (written once {BEST_WINDOW} episodes of each initial rate have finished)" if path.name == "best.pt" else ""
        raise UserError(f"no checkpoint {path.name} in {folder}{why}; there are: {', '.join(known) or 'none'}")
    return path


def save_training_state(run_dir, state):
    """checkpoints/latest.pt: everything --resume needs (TRAINING_STATE_KEYS), written atomically."""
    missing = set(TRAINING_STATE_KEYS) - set(state)
    assert not missing, f"training state lacks {sorted(missing)}"
    save_checkpoint(Path(run_dir) / "checkpoints" / TRAINING_STATE, state)


def load_training_state(run_dir, device_type):
    """The state save_training_state wrote, or None for a run stopped before its first update. A run
    that recorded updates but has no latest.pt is a UserError: starting it over would erase its records."""
    path = Path(run_dir) / "checkpoints" / TRAINING_STATE
    if not path.exists():
        if read_jsonl(Path(run_dir) / "updates.jsonl") or read_jsonl(Path(run_dir) / "episodes.jsonl"):
            raise UserError(f"{path} is missing, so {Path(run_dir).name} cannot continue where it stopped; "
                            f"its records are kept: restore latest.pt, or start a new run without --resume")
        return None
    state = load_checkpoint(path, required=TRAINING_STATE_KEYS)
    if state["device"] != device_type:  # children are stacked for vmap on a GPU, separate on a CPU
        raise UserError(f"{Path(run_dir).name} was running on {state['device']}; "
                        f"resume it with --device {state['device']}")
    return state


def setting_id(args):
    """Name of the folder holding the baselines of one training setting (dataset, child, steps...):
    the settings that change a run's numbers, those at their defaults left out."""
    name = f"{dataset_name(args.dataset)}_{args.architecture}_steps{args.num_train_steps}_batch{args.batch_size}"
    for flag, value, default in (("uf", args.update_freq, EnvConfig.update_freq), ("train", args.train_size, None),
                                 ("val", args.val_size, DEFAULT_VAL_SIZE), ("c", args.classes, None),
                                 ("noise", args.label_noise, 0.0), ("px", args.image_size, None),
                                 ("", args.optimizer, EnvConfig.optimizer), ("wd", args.weight_decay, 0.0),
                                 ("b1-", args.beta1, EnvConfig.beta1), ("b2-", args.beta2, EnvConfig.beta2),
                                 ("seed", args.seed, DEFAULT_SEED),
                                 ("", args.precision, EnvConfig.precision)):
        if value != default:
            name += f"_{flag}{value}"
    return name


def baseline_dir(args):
    return Path(args.runs_dir) / "baselines" / setting_id(args)


def best_of(results, kind, initial_lr=None):
    """The finished baseline run of ``kind`` with the lowest final validation loss (optionally among
    those starting at ``initial_lr``), or None."""
    finished = [r for r in results if r["kind"] == kind and r["final_val_loss"] is not None
                and (initial_lr is None or math.isclose(r["initial_lr"], initial_lr))]
    return min(finished, key=lambda r: r["final_val_loss"]) if finished else None
