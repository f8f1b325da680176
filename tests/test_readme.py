"""The README's quickstart runs as written, and its test command is what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    assert scope["logits"].shape == (4, 10)
    assert set(scope["spikes"].unique().tolist()) <= {0.0, 1.0}


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands\n\n```bash\n(.*?)```", text, re.S).group(1)
    test_cmd = block.strip().splitlines()[1].split("#")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == test_cmd
