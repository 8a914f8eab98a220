"""The README's Deploy snippets run as written, each in a fresh process (so a missing import or
a stale API in the README fails here)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def deploy_snippets():
    text = README.read_text()
    start = text.index("\n## Deploy\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


SNIPPETS = deploy_snippets()


def test_the_deploy_section_has_snippets():
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_deploy_snippet_runs(index, tmp_path):
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", SNIPPETS[index]],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"snippet {index}:\n{SNIPPETS[index]}\n{result.stderr[-3000:]}"
