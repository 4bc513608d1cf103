"""Quiet logs: `lungseg predict` prints only lungseg's own lines (`-v` brings TensorFlow's start-up lines
back), and lungseg's warning filters drop the third-party warnings every `kedro run` printed, and no others.

The CLI runs in a fresh process (TensorFlow prints its start-up lines once per process, when it loads),
without TF_CPP_MIN_LOG_LEVEL in the environment, on a tiny model and CT written here.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, phantom, write_nifti

from lungseg import cli

VERSION = "2025-06-01T12.00.00.000Z"
# lungseg's own lines: its results ("lungseg: ...") and its log records ("INFO lungseg.inference...: ...")
OWN_LINE = re.compile(r"^(lungseg: |(DEBUG|INFO|WARNING|ERROR|CRITICAL) lungseg[.:])")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    """A lung model (one 1x1 convolution) in the training pipeline's versioned layout, and a chest CT."""
    import keras

    root = tmp_path_factory.mktemp("cli_logs")
    model_file = root / "models" / "lung_unet" / "model.keras" / VERSION / "model.keras"
    model_file.parent.mkdir(parents=True)
    inp = keras.Input((32, 32, 1))
    keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp)).save(model_file)
    config = root / "models" / "lung_unet" / "model_config.json" / VERSION / "model_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({
        "task": "lung", "architecture": "unet", "image_size": 32, "crop_mode": "body", "window": [-1250, 250],
        "clahe_clip_limit": 0.0, "clahe_tile_grid": 4, "crop_margin": 2, "threshold": 0.5,
    }))
    ct, _, _ = phantom()
    return {"root": root, "models": root / "models", "ct": write_nifti(root / "ct.nii.gz", ct)}


def run_predict(case: dict[str, Path], out: str, *flags: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "lungseg"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lungseg.cli"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [*command, *flags, "predict", str(case["ct"]), "-o", str(case["root"] / out), "--models-dir",
         str(case["models"]), "--tasks", "lung", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=case["root"],
    )
    # 3: the plausibility guard (#14) refuses this untrained model's lungs over the whole field of view;
    # the outputs are written all the same, and these tests are about the log lines
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    assert (case["root"] / out / "lung_mask.nii.gz").is_file()
    return proc


def test_plain_predict_prints_only_lungseg_lines(case):
    proc = run_predict(case, "out_plain")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert any(line.startswith("lungseg: outputs written to") for line in lines), lines
    assert [line for line in lines if not OWN_LINE.match(line)] == []


def test_verbose_brings_tensorflow_lines_back(case):
    proc = run_predict(case, "out_verbose", "-v")
    assert any(cli._TF_NOISE.match(line) for line in proc.stderr.splitlines()), proc.stderr
    assert "lungseg: outputs written to" in proc.stdout


def test_noise_pattern_drops_tensorflow_start_up_lines_only():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796109225.533847   16096 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796109225.534754   16096 cudart_stub.cc:31] Could not find cuda drivers on your machine",
        "E0000 00:00:1796109227.855549   16096 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "W1201 07:12:00.123456    4242 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
    ]
    kept = [
        "INFO lungseg.inference.models: lung model: models/lung_unet/model.keras",
        "E0000 00:00:1796109227.855549   16096 bfc_allocator.cc:485] Allocator ran out of memory",
        "Traceback (most recent call last):",
        "  You can now view your Streamlit app in your browser.",
    ]
    assert all(cli._TF_NOISE.match(line) for line in noise)
    assert not any(cli._TF_NOISE.match(line) for line in kept)


def test_relay_passes_the_ui_server_lines_on_without_tensorflow_noise(capsys):
    stream = io.StringIO("I0000 00:00:17961.1   1 port.cc:153] oneDNN custom operations are on.\n"
                         "Stopping...\n")
    cli._relay_stderr(stream)
    assert capsys.readouterr().err == "Stopping...\n"


_WARNINGS_SCRIPT = """
import sys, warnings
from pathlib import Path
# the warnings lungseg filters become errors, unless lungseg's own (narrow) filters catch them first
warnings.filterwarnings("error", message=r"(register_new_resolver|One or more dataset names contain)")
import lungseg
from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf
OmegaConfigLoader(conf_source=str(Path(sys.argv[1]) / "conf"), base_env="base", default_run_env="local")
from lungseg.pipeline_registry import register_pipelines
register_pipelines()  # namespaced pipelines reading 'preprocessing.case_split' and the like
try:  # the same deprecation raised from any other module is not filtered
    OmegaConf.register_new_resolver("lungseg_probe", lambda: 1)
except UserWarning:
    print("own call still warned")
"""


def test_third_party_warnings_are_filtered_narrowly():
    proc = subprocess.run([sys.executable, "-c", _WARNINGS_SCRIPT, str(PROJECT_ROOT)], capture_output=True,
                          text=True, timeout=300, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "own call still warned"


def test_kedro_commands_of_the_project_print_no_tensorflow_start_up_lines():
    """settings.py imports TensorFlow with its start-up lines held back, so every kedro command of the
    project is quiet, `kedro viz` included (it loads the same settings and pipelines as this one)."""
    kedro = Path(sys.executable).parent / "kedro"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "LUNGSEG_TF_VERBOSE")}
    proc = subprocess.run([str(kedro), "registry", "describe", "infection_unet"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "infection_unet.train_model" in proc.stdout              # the pipelines were built (TensorFlow loaded)
    noise = [line for line in proc.stderr.splitlines() if cli._TF_NOISE.match(line)]
    assert noise == [], noise
    assert "oneDNN" not in proc.stderr and "cuda" not in proc.stderr.lower()
