"""The README's python snippets run as written, and its links point at files of the repository.

All snippets run in one fresh interpreter (each in its own namespace, in a temporary working directory),
so that the imports are paid once; a snippet that fails names itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

RUNNER = r"""
import sys, traceback
snippets = {snippets!r}
for number, code in enumerate(snippets, 1):
    try:
        exec(compile(code, f"README python snippet {{number}}", "exec"), {{"__name__": "__main__"}})
    except BaseException:
        traceback.print_exc()
        print(f"README python snippet {{number}} failed:\n{{code}}", file=sys.stderr)
        sys.exit(1)
    print(f"snippet {{number}} ok", flush=True)
"""


def python_snippets(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_python_snippets_run(tmp_path):
    snippets = python_snippets(README.read_text(encoding="utf-8"))
    assert len(snippets) >= 4, "the README shows train, analyse, manifold head and K-FAC snippets"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", RUNNER.format(snippets=snippets)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok") == len(snippets)


def test_the_readme_is_an_entry_page_whose_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160
    assert "make test" in text and "make demo" in text  # the two set-up commands; CI runs `make test`
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to its documentation pages"
    missing = [t for t in local if not (REPO / t).exists()]
    assert missing == [], missing
