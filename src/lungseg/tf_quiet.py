"""TensorFlow imported with its start-up lines held back: used by the CLI (unless -v), the UI's server relay
and the Kedro settings (every `kedro` command of the project, `kedro viz` included).

TensorFlow writes start-up lines straight to the stderr file descriptor while it loads and looks for devices
("I0000 ... port.cc:153] oneDNN custom operations are on", "Could not find cuda drivers", "failed call to
cuInit" without a GPU), where TF_CPP_MIN_LOG_LEVEL does not reach them. :func:`import_quietly` holds back
these lines, and only these, so that a command prints its own lines.
"""

from __future__ import annotations

import os
import re
import sys

TF_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*(cuInit|Unable to register cu)"
)


def import_quietly(quiet: bool = True) -> None:
    """Import TensorFlow and let it find its devices with its start-up lines (:data:`TF_NOISE`) held back
    from stderr; anything else written there meanwhile is passed on. Does nothing when not ``quiet``, once
    TensorFlow is loaded, or when Keras runs on another backend."""
    if not quiet:
        return
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not TF_NOISE.match(line)))
