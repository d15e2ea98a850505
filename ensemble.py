"""Join controllers trained alike (the same flags, other training seeds) into one checkpoint that acts
as their median (alrs.ControllerEnsemble): ALRSScheduler, compare.py --controller and the pretrained
folder take it as they take one controller.

    python ensemble.py --out runs/G3.pt runs/G/checkpoints/step-0030000_*.pt runs/G-seed1/... runs/G-seed2/...

The members must observe and act alike (features, anchor); a median needs three or more to outvote
one member's failure.
"""
import argparse

from alrs.controller import ensemble_state, read_controller_checkpoint
from utils import UserError, run_cli, save_checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("controllers", nargs="+", metavar="CHECKPOINT", help="controller checkpoints to join")
    p.add_argument("--out", required=True, help="the ensemble's checkpoint file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if len(args.controllers) < 2:
        raise UserError("an ensemble joins two or more controllers")
    states = [read_controller_checkpoint(path) for path in args.controllers]
    if any("members" in state for state in states):
        raise UserError("join single controllers, not ensembles")
    save_checkpoint(args.out, ensemble_state(states))
    print(f"{args.out}: the median of {len(states)} controllers")


if __name__ == "__main__":
    run_cli(main)
