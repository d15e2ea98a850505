"""The shared base of the scripts: user errors and the CLI wrapper, atomic files, JSON and checkpoints."""
import io
import json
import math
import os
import signal
import sys
from pathlib import Path

import torch

from alrs.checkpoint import UserError, load_checkpoint  # noqa: F401  (the scripts' shared base)


def resolve_device(name, cudnn_benchmark=True):
    """The device of --device (auto: a GPU if there is one). ``cudnn_benchmark`` lets cuDNN time its
    convolution algorithms and keep the fastest (bit-exact repeat runs need it off).

    On the CPU torch gets one thread unless OMP_NUM_THREADS asks for more: the children are small, and
    a second thread per process made short runs 1.25 to 7.5 times slower on a busy 2-core machine."""
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return torch.device(name)


def run_cli(main, argv=None, prog=None):
    """Run a script's ``main(argv)``: user errors become one line on stderr (exit 2), Ctrl-C a clean
    exit (130). SIGTERM (``kill``, a job scheduler's stop) is handled as Ctrl-C, so a script stopped
    either way saves what it can and says how to continue. Tests call it in-process with an argument list."""
    prog = prog or Path(sys.argv[0]).name
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        main(argv)
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; finished results are saved.", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupt(signum, frame):
    """SIGTERM's handler: stop the way Ctrl-C does."""
    raise KeyboardInterrupt


def new_folders(path):
    """The folders that creating folder ``path`` would create: it and its missing parents, deepest first."""
    path = Path(path).absolute()
    return [folder for folder in (path, *path.parents) if not folder.exists()]


def remove_empty(folders):
    """Remove those of ``folders`` (deepest first) that are empty: what a failed or trial step created."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            pass


def atomic_write(path, write):
    """Write a file through ``write(file_object)`` into a temporary file, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process; open() honours the umask
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def json_floats(values):
    """Floats for a JSON file: NaN and infinities (which JSON lacks) become null."""
    return [float(v) if math.isfinite(v) else None for v in values]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def append_jsonl(path, record):
    """Append one record as a line, always on a line of its own; a crash can tear at most this line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(json.dumps(record).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def drop_torn_last_line(path):
    """Remove a last line cut short by a crash (it is not JSON) from a JSONL file, with a warning,
    so that the work it recorded is redone and later appends start clean."""
    path = Path(path)
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    if not lines:
        return
    try:
        json.loads(lines[-1])
    except json.JSONDecodeError:
        print(f"warning: dropped the torn last line of {path} (a crash while writing); its work is redone",
              file=sys.stderr)
        kept = "".join(line + "\n" for line in lines[:-1])
        atomic_write(path, lambda f: f.write(kept.encode()))


def read_jsonl(path):
    """Records of a JSONL file; a last line cut short by a crash is skipped, any other bad line is an error."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}, line {number}, is not JSON; repair or remove that line") from None
    return records


def save_checkpoint(path, state):
    """Save a dict of tensors and plain values atomically (loadable with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
