"""Reading controller checkpoints, and the error every ALRS tool reports in one line."""
import torch


class UserError(Exception):
    """A problem the user can fix (bad flag, missing or foreign file); the scripts print it as one line,
    never a traceback."""


def load_checkpoint(path, required=("format",)):
    """Load a checkpoint with weights_only=True; a truncated or foreign file is a UserError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise UserError(f"{path} is not a readable ALRS checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise UserError(f"{path} is not an ALRS checkpoint")
    return state
