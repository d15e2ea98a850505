"""The generalist study's held-out table: compare.py's summary.json as one Markdown table, a row per
task, every method from the default start rate 1e-3 and the best-of-grid rows beside them.

    python experiments/generalist_table.py runs/compare/summary.json > table.md
"""
import json
import sys

START = "1e-3"
COLUMNS = (  # (header, row name or kind picked over the start rates)
    ("generalist A", f"alrs:generalist-A@{START}"), ("its replay", f"replay:generalist-A@{START}"),
    ("generalist B", f"alrs:generalist-B@{START}"), ("its replay", f"replay:generalist-B@{START}"),
    ("shipped (one task)", f"alrs:fa-mnist_mlp_stable@{START}"),
    ("constant", f"constant@{START}"), ("cosine", f"cosine@{START}"), ("ReduceLROnPlateau", f"plateau@{START}"),
    ("OneCycle", f"onecycle@{START}"), ("best step decay", ("step_decay", START)),
    ("best cosine (start)", ("cosine", None)), ("schedule-free AdamW, best lr", ("schedulefree", None)),
    ("Prodigy", "prodigy"),
)


def cell(rows, name):
    """mean ± standard error of the final validation loss, failed runs counted, or – when not run."""
    row = rows.get(name)
    if row is None or row["final_val_loss"]["mean"] is None:
        return "–"
    loss = row["final_val_loss"]
    text = f"{loss['mean']:.3f} ± {loss['sem']:.3f}" if loss["sem"] is not None else f"{loss['mean']:.3f}"
    return text + (f" ({row['failed']}/{loss['runs'] + loss['diverged']} failed)" if row["failed"] else "")


def best(rows, kind, start):
    """The row of ``kind`` with the lowest mean final validation loss (from ``start`` only, if given)."""
    names = [n for n, r in rows.items() if r["kind"] == kind and r["final_val_loss"]["mean"] is not None
             and (start is None or n.endswith(f"@{start}"))]
    return min(names, key=lambda n: rows[n]["final_val_loss"]["mean"], default=None)


def table(summary):
    lines = ["| task | " + " | ".join(h for h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for task, content in summary["tasks"].items():
        rows, cells = content["rows"], []
        for _, column in COLUMNS:
            if isinstance(column, tuple):
                name = best(rows, *column)
                start = "" if name is None or column[1] else f" ({name.split('@')[1]})"
                cells.append(("–" if name is None else cell(rows, name)) + start)
            else:
                cells.append(cell(rows, column))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.load(open(sys.argv[1]))))
