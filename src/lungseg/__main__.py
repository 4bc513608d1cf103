"""``python -m lungseg ...``: the same command line as the ``lungseg`` script (``predict``, ``ui``, ...).

(Kedro's template ran ``kedro run`` here through ``find_run_command``, which looks for a ``run``
command in ``lungseg.cli``; lungseg's CLI is its own argparse program, so that crashed with an
AttributeError. Pipelines run with ``kedro run``.)
"""

import sys

from lungseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
