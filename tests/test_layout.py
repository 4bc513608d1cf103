"""lungseg.layout: the one home of tasks, variants, suffixes, the models folder and case-id rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lungseg import layout
from lungseg.errors import ConfigError, DataValidationError
from lungseg.layout import (
    case_id_from_ct_name,
    case_id_from_path,
    file_suffix,
    resolve_relative,
    split_variant,
    strip_nifti_suffix,
    variant_architecture,
    variant_task,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "lungseg"


def test_tasks_and_variants():
    assert layout.TASKS == ("lung", "infection")
    assert layout.VARIANTS == ("lung_unet", "lung_deeplabv3plus", "infection_unet", "infection_deeplabv3plus")
    assert [variant_task(v) for v in layout.VARIANTS] == ["lung", "lung", "infection", "infection"]
    assert [variant_architecture(v) for v in layout.VARIANTS] == ["unet", "deeplabv3plus"] * 2
    assert layout.variant_name("infection", "unet") == "infection_unet"
    with pytest.raises(ConfigError, match="unknown variant 'heart_unet'.*lung_unet"):
        variant_task("heart_unet")
    with pytest.raises(ConfigError, match="unknown task 'heart'; expected one of lung, infection"):
        layout.check_task("heart")
    assert split_variant("lung_unet_small") == ("lung", "unet_small")  # lenient: any architecture
    assert split_variant("heart_unet") is None and split_variant("lung") is None


def test_architectures_match_the_model_builders():
    from lungseg.models import ARCHITECTURES

    assert set(layout.ARCHITECTURES) == set(ARCHITECTURES)


@pytest.mark.parametrize("name, suffix, stem", [
    ("ct.nii.gz", ".nii.gz", "ct"),
    ("dir/CT.NII.GZ", ".nii.gz", "CT"),
    ("a.b.nii", ".nii", "a.b"),
    ("slice.PNG", ".png", "slice"),
    ("series.zip", ".zip", "series"),
    ("noext", "", "noext"),
    (".hidden", "", ".hidden"),
    ("C:\\data\\x.nii", ".nii", "x"),
])
def test_suffixes(name, suffix, stem):
    assert file_suffix(name) == suffix
    assert strip_nifti_suffix(name) == stem
    assert layout.is_nifti(name) == (suffix in layout.NIFTI_SUFFIXES)


def test_case_ids():
    assert case_id_from_path("lung_mask/coronacases_001.nii") == "coronacases_001"
    assert case_id_from_path("../input/x/lung_mask/synth_000.nii.gz") == "synth_000"
    assert case_id_from_ct_name("ct_scans/coronacases_001_org.nii.gz") == "coronacases_001"
    assert case_id_from_ct_name("coronacases_org_001.nii") == "coronacases_001"
    assert case_id_from_ct_name("radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii") == "radiopaedia_4_85506_1"
    assert case_id_from_ct_name("_org.nii") == "_org"


def test_resolve_relative():
    assert resolve_relative("../input/covid19-ct-scans/ct_scans/a.nii") == "ct_scans/a.nii"
    assert resolve_relative(f"{layout.KAGGLE_PREFIX}/lung_mask/a.nii") == "lung_mask/a.nii"
    assert resolve_relative("ct_scans\\a.nii") == "ct_scans/a.nii"
    for bad, problem in [("/abs/a.nii", "absolute path"), ("C:/a.nii", "absolute path"),
                         ("../a.nii", "escapes the dataset root"), ("", "empty path"), ("nan", "empty path")]:
        with pytest.raises(DataValidationError, match=problem) as info:
            resolve_relative(bad, case="c")
        assert str(info.value).startswith("case 'c'")


def test_conventions_are_not_spelled_again_in_the_modules_that_use_layout():
    """The files moved onto layout do not define their own copy of a convention."""
    pattern = re.compile(r"^\s*(TASKS|VARIANTS|NIFTI_SUFFIXES|IMAGE_SUFFIXES|DICOM_SUFFIXES|DEFAULT_MODELS_DIR)\s*=",
                         re.MULTILINE)
    files = [*(SRC / "inference").glob("*.py"), *(SRC / "app").glob("*.py"), *(SRC / "synthetic").glob("*.py"),
             SRC / "evaluation" / "reference.py"]
    offenders = [str(f.relative_to(SRC)) for f in files if pattern.search(f.read_text())]
    assert offenders == []
    assert not (SRC / "pipelines" / "ingestion" / "paths.py").exists()
    literal = [str(f.relative_to(SRC)) for f in files if '"data/06_models"' in f.read_text()]
    assert literal == []


def test_paper_figures_have_one_home():
    from lungseg.evaluation.reference import PAPER, paper_figures, reference_table

    assert paper_figures("lung_unet") == {"dice": 0.8513, "iou": 0.7652}
    assert paper_figures("lung_deeplabv3plus") == {"dice": 0.8623, "iou": 0.7831}
    assert paper_figures("infection_unet") == {"dice": 0.7210, "iou": 0.6450}
    assert paper_figures("infection_deeplabv3plus") == {}
    paper_figures("lung_unet")["dice"] = 0  # a copy: the table cannot be changed by a caller
    assert PAPER["lung_unet"]["dice"] == 0.8513
    assert paper_figures("lung_resnet") == {}  # a variant the paper did not report (e.g. in an old report)
    with pytest.raises(ConfigError, match="'heart' is not a variant name"):
        paper_figures("heart")
    rows = reference_table("lung").set_index("variant")
    assert rows.loc["paper U-Net", ["dice", "iou"]].tolist() == [0.8513, 0.7652]
    assert rows.loc["paper DeepLabV3+", ["dice", "iou"]].tolist() == [0.8623, 0.7831]
    assert reference_table("infection").set_index("variant").loc["paper U-Net", "dice"] == 0.7210


def test_cross_validation_names():
    assert layout.cv_name("infection_unet") == "infection_unet_cv"
    assert layout.cv_name("infection_*") == "infection_*_cv"  # a glob of fold folders
    assert layout.is_cv_name("lung_unet_cv") and not layout.is_cv_name("lung_unet") and not layout.is_cv_name(None)
    assert layout.strip_cv("lung_unet_cv") == "lung_unet"
    assert layout.strip_cv("lung_unet") == "lung_unet"
    assert [layout.strip_cv(layout.cv_name(v)) for v in layout.VARIANTS] == list(layout.VARIANTS)


@pytest.mark.parametrize("spec", ["models:/lungseg-combined/3", "models:/lungseg-combined@champion", "runs:/abc/model",
                                  "RUNS:/abc/model", "mlflow-artifacts:/1/abc/artifacts/m", "file:///tmp/m",
                                  "s3://bucket/m", "gs://b/m", "wasbs://c@a.blob.core.windows.net/m", "hdfs:/m",
                                  "dbfs:/m"])
def test_model_uris(spec):
    assert layout.is_model_uri(spec)


@pytest.mark.parametrize("spec", [None, "", "data/06_models/lung_unet", "C:/models/lung.keras", "model.keras",
                                  "/abs/runs:/x", "models/lungseg-combined", "http://host/m", " models:/x/1"])
def test_paths_are_not_model_uris(spec):
    assert not layout.is_model_uri(spec)


def test_one_owner_of_the_cv_suffix_and_of_model_uris():
    """Only layout.py spells the ``_cv`` suffix or lists model URI schemes."""
    sources = {str(p.relative_to(SRC)): p.read_text() for p in SRC.rglob("*.py")}
    assert [f for f, text in sources.items() if re.search(r"_cv[\"']", text)] == ["layout.py"]
    assert [f for f, text in sources.items() if re.search(r"runs\|models|\"runs\", \"models\"|'runs', 'models'", text)
            ] == ["layout.py"]
