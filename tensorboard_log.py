"""--tensorboard: train.py's metrics as TensorBoard scalars, beside episodes.jsonl and updates.jsonl.

Per episode the reference's scalars, the final validation loss and its log; per PPO update every
number of updates.jsonl. The x axis is controller steps (timesteps) over all environments.
"""
import math

from utils import UserError

NOT_PLOTTED = ("update", "timesteps")  # the x axis, not a curve


class TensorBoardLog:
    """A SummaryWriter on ``folder``; ``purge_step`` drops the events a resumed run is about to redo."""

    def __init__(self, folder, purge_step=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # flags.check refuses --tensorboard without the package; this guards the API
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def add(self, episodes, update):
        """The records of one update: its finished episodes (episodes.jsonl lines) and its statistics."""
        for episode in episodes:
            if episode["final_val_loss"] is not None:
                self.writer.add_scalar("episode/final_val_loss", episode["final_val_loss"], episode["timesteps"])
                self.writer.add_scalar("episode/log_final_val_loss", math.log(episode["final_val_loss"]),
                                       episode["timesteps"])
        for name, value in update.items():
            if name not in NOT_PLOTTED and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"ppo/{name}", value, update["timesteps"])
        self.writer.flush()

    def close(self):
        self.writer.close()
