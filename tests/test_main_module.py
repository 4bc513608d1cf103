"""``python -m lungseg`` is the lungseg command line (#29 item 3: it crashed with an AttributeError)."""

import subprocess
import sys


def test_python_m_lungseg_runs_the_lungseg_cli():
    done = subprocess.run([sys.executable, "-m", "lungseg", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "predict" in done.stdout and "AttributeError" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "lungseg", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
