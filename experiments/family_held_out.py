"""The held-out family instances of the tuning-free study, fixed before any arm was trained.

Rule: walk the family seeds 0, 1, 2, ... (all below tasks.FAMILY_TRAINING_SEEDS, so no training run
draws them), each drawn with every optimizer and the fixed members MLP and LeNet-5 (ResNet-18 is too
slow for a CPU benchmark), and keep a seed unless keeping it would leave too few of the 24 places for
the quotas still unmet: at least 8 with batch norm, 8 with AdamW and weight decay, 4 at batch <= 32,
4 with >= 2000 steps.

    python experiments/family_held_out.py           # the table
    python experiments/family_held_out.py --flags   # as compare.py --task flags
    python experiments/family_held_out.py --flags --optimizer schedulefree

With ``--optimizer NAME``, each seed drawn with NAME its only optimizer: the same child, data and
horizon, and NAME's settings drawn as the family draws them (the ones a controller trained with
``--family-optimizers NAME`` sees), spelled out in the flags, as ``family=SEED,optimizer=NAME`` alone
would keep the settings of the optimizer the seed drew (an SGD child's momentum as NAME's beta1).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import parse_random_architecture  # noqa: E402
from optimizers import OPTIMIZERS  # noqa: E402
from tasks import FAMILY_TRAINING_SEEDS, OPTIMIZER_KEYS, family_task  # noqa: E402

SIZE = 24
MEMBERS = ("mlp", "cnn")
QUOTAS = {  # name: (how many at least, whether a task counts)
    "batch norm": (8, lambda t: t.architecture.startswith("rc-") and parse_random_architecture(t.architecture)[3]),
    "AdamW, weight decay": (8, lambda t: t.optimizer == "adamw" and t.weight_decay > 0),
    "batch <= 32": (4, lambda t: t.batch_size <= 32),
    ">= 2000 steps": (4, lambda t: t.num_train_steps >= 2000),
}


def held_out_seeds():
    """The SIZE seeds the rule keeps, in order."""
    kept = []
    for seed in range(FAMILY_TRAINING_SEEDS.start):
        task = family_task(seed, members=MEMBERS)
        missing = {name: max(0, need - sum(test(family_task(s, members=MEMBERS)) for s in kept))
                   for name, (need, test) in QUOTAS.items()}
        helps = sum(missing[name] > 0 and test(task) for name, (_, test) in QUOTAS.items())
        if helps or SIZE - len(kept) - 1 >= sum(missing.values()):
            kept.append(seed)
        if len(kept) == SIZE:
            return kept
    raise RuntimeError("the quotas cannot be met")


def task_flag(seed, optimizer=None):
    """compare.py's --task flag of a held-out seed, drawn with ``optimizer`` its only one if given."""
    if optimizer is None:
        return f"--task family={seed}"
    task = family_task(seed, (optimizer,), MEMBERS)
    return f"--task family={seed}," + ",".join(f"{key}={getattr(task, key)}" for key in OPTIMIZER_KEYS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", action="store_true", help="print compare.py's --task flags")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="with --flags: every seed drawn with this optimizer only")
    args = parser.parse_args()
    seeds = held_out_seeds()
    if args.flags:
        print(" ".join(task_flag(seed, args.optimizer) for seed in seeds))
        return
    print("| seed | task | " + " | ".join(QUOTAS) + " |")
    print("|---|---|" + "---|" * len(QUOTAS))
    for seed in seeds:
        task = family_task(seed, members=MEMBERS)
        print(f"| {seed} | {task.name} | " + " | ".join("x" if test(task) else "" for _, test in QUOTAS.values()) + " |")
    print("totals: " + ", ".join(f"{name} {sum(test(family_task(s, members=MEMBERS)) for s in seeds)}"
                                 for name, (_, test) in QUOTAS.items()))


if __name__ == "__main__":
    main()
