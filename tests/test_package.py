"""The alrs package as a user gets it: pip-installed, imported from another folder next to a models.py of
the user's own, with torch and numpy only."""
import os
import subprocess
import sys
import textwrap

from conftest import ROOT

USER_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.nn.functional as F
    import models  # the user's own models.py, not the project's
    import alrs
    from alrs import ALRSScheduler

    assert models.MINE and alrs.__file__.startswith(sys.argv[1]), alrs.__file__
    assert "torchvision" not in sys.modules and "matplotlib" not in sys.modules
    print("controllers", " ".join(alrs.pretrained_controllers()))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    images, labels = torch.rand(96, 1, 8, 8), torch.randint(4, (96,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    alrs_scheduler = ALRSScheduler.from_pretrained("generalist_mlp_progress", optimizer, model, (images[:32], labels[:32]),
                                                   total_steps=40)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, alrs_scheduler], milestones=[10])
    rates = []
    for step in range(50):
        loss = F.cross_entropy(model(images[32:]), labels[32:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    print("rates", len(set(rates[10:])) > 1, rates[0] < rates[9])
""")


def test_pip_install_then_import_from_a_folder_with_its_own_models_py(tmp_path):
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    assert not list(target.glob("*.py")), "only the alrs package is installed, not the research scripts"
    user = tmp_path / "my_project"
    user.mkdir()
    (user / "models.py").write_text("MINE = True\n")
    (user / "train.py").write_text(USER_SCRIPT)
    result = subprocess.run([sys.executable, "-W", "ignore", "train.py", str(target)], cwd=user, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert {"fa-mnist_mlp_stable", "generalist_mlp_progress"} <= set(lines["controllers"].split())
    assert lines["rates"] == "True True"
