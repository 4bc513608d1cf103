"""The embedded synthetic chest-CT dataset: determinism, layout, labels, intensities, orientation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from nibabel import orientations as nio

from lungseg.errors import ConfigError
from lungseg.synthetic import (
    DEFAULT_PROFILES,
    KAGGLE_PREFIX,
    METADATA_COLUMNS,
    LazyCaseStore,
    generate_case,
    resolve_params,
    resolve_profile,
    stored_affine,
    write_dataset,
)
from lungseg.synthetic.nifti import make_image, to_stored

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def to_canonical(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Reorient a file's data to LPS with nibabel and transpose to canonical (z, y, x)."""
    ornt = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(("L", "P", "S")))
    return nio.apply_orientation(np.asanyarray(img.dataobj), ornt).transpose(2, 1, 0)


def files_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    return root, write_dataset(root, profile="tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_cases():
    return [generate_case(i, "tiny", seed=0) for i in range(DEFAULT_PROFILES["tiny"]["n_cases"])]


# ------------------------------------------------------------------------------------ determinism
def test_generate_case_is_deterministic_for_a_seed(tiny_cases):
    again = generate_case(0, "tiny", seed=0)
    assert np.array_equal(again.ct, tiny_cases[0].ct)
    assert np.array_equal(again.lung, tiny_cases[0].lung)
    assert np.array_equal(again.infection, tiny_cases[0].infection)
    other = generate_case(0, "tiny", seed=1)
    assert other.ct.shape != again.ct.shape or not np.array_equal(other.ct, again.ct)


def test_written_files_are_byte_identical_for_a_seed(tiny_root, tmp_path):
    root, _ = tiny_root
    write_dataset(tmp_path / "again", profile="tiny", seed=0)
    assert files_digest(tmp_path / "again") == files_digest(root)
    write_dataset(tmp_path / "other", profile="tiny", seed=7, n_cases=1)
    a = (root / "ct_scans/synth_000_org.nii.gz").read_bytes()
    b = (tmp_path / "other/ct_scans/synth_000_org.nii.gz").read_bytes()
    assert a != b


def test_case_depends_only_on_seed_and_index_not_on_the_set_size(tmp_path):
    write_dataset(tmp_path, profile="tiny", seed=0, n_cases=2)
    case = generate_case(1, "tiny", seed=0)
    img = nib.load(tmp_path / "lung_mask/synth_001.nii.gz")
    assert np.array_equal(to_canonical(img), case.lung)


# ------------------------------------------------------------------------------- layout, metadata
def test_write_dataset_creates_every_file_and_kaggle_metadata(tiny_root):
    root, metadata = tiny_root
    n = DEFAULT_PROFILES["tiny"]["n_cases"]
    assert list(metadata.columns) == list(METADATA_COLUMNS)
    assert len(metadata) == n
    on_disk = pd.read_csv(root / "metadata.csv")
    pd.testing.assert_frame_equal(on_disk, metadata)
    assert metadata.loc[0, "ct_scan"] == f"{KAGGLE_PREFIX}/ct_scans/synth_000_org.nii.gz"
    assert metadata.loc[2, "lung_and_infection_mask"] == f"{KAGGLE_PREFIX}/lung_and_infection_mask/synth_002.nii.gz"
    for column in METADATA_COLUMNS:
        for path in metadata[column]:
            assert path.startswith("../input/covid19-ct-scans/")
            assert (root / path.removeprefix(KAGGLE_PREFIX + "/")).is_file(), path
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) == 4 * n + 1
    assert not [p for p in files if p.name.startswith(".")]  # no temporary files left behind


def test_metadata_paths_resolve_like_ingestion_expects(tiny_root):
    from lungseg.layout import case_id_from_path, resolve_relative

    root, metadata = tiny_root
    for row in metadata.to_dict("records"):
        assert case_id_from_path(row["lung_mask"]).startswith("synth_")
        for column in METADATA_COLUMNS:
            assert (root / resolve_relative(row[column])).is_file()


# ------------------------------------------------------------------------------------------ labels
def test_label_conventions_in_canonical_space(tiny_cases):
    for case in tiny_cases:
        assert case.lung.dtype == np.uint8 and case.infection.dtype == np.uint8
        assert set(np.unique(case.lung)) <= {0, 1, 2}
        assert set(np.unique(case.infection)) <= {0, 1}
        cols = np.arange(case.lung.shape[2])[None, None, :]
        left_col = np.broadcast_to(cols, case.lung.shape)[case.lung == 1].mean()
        right_col = np.broadcast_to(cols, case.lung.shape)[case.lung == 2].mean()
        assert left_col > right_col, case.case_id  # the patient's left lung has the larger column index
        assert not np.any((case.infection > 0) & (case.lung == 0)), "infection outside the lungs"
        labels = case.labels
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        assert np.array_equal(labels == 3, case.infection > 0)
        assert np.array_equal(np.where(labels == 3, 0, labels), np.where(case.infection > 0, 0, case.lung))


def test_lungs_are_absent_at_both_ends_and_present_in_the_middle(tiny_cases):
    for case in tiny_cases:
        per_slice = (case.lung > 0).sum(axis=(1, 2))
        assert per_slice[0] == 0 and per_slice[-1] == 0, case.case_id
        assert per_slice[len(per_slice) // 2] > 0, case.case_id


def test_mask_files_match_each_other(tiny_root):
    root, _ = tiny_root
    for i in range(DEFAULT_PROFILES["tiny"]["n_cases"]):
        lung = np.asanyarray(nib.load(root / f"lung_mask/synth_{i:03d}.nii.gz").dataobj)
        inf = np.asanyarray(nib.load(root / f"infection_mask/synth_{i:03d}.nii.gz").dataobj)
        both = np.asanyarray(nib.load(root / f"lung_and_infection_mask/synth_{i:03d}.nii.gz").dataobj)
        assert lung.dtype == inf.dtype == both.dtype == np.uint8
        assert np.array_equal(both, np.where(inf > 0, 3, lung))


# ------------------------------------------------------------------------------------ intensities
def test_both_intensity_kinds_are_written(tiny_root, tiny_cases):
    root, _ = tiny_root
    kinds = {c.source_kind for c in tiny_cases}
    assert kinds == {"hu", "uint8"}
    for case in tiny_cases:
        img = nib.load(root / f"ct_scans/{case.case_id}_org.nii.gz")
        data = np.asanyarray(img.dataobj)
        if case.source_kind == "hu":
            assert img.get_data_dtype() == np.int16 and data.dtype == np.int16
            assert case.pad_value in (-2048, -3024)
            corners = data[[0, 0, -1, -1], [0, -1, 0, -1], :]
            assert np.all(corners == case.pad_value)  # outside the circular field of view
            inside = data[data != case.pad_value]
            assert inside.min() >= -1024 and inside.max() > 300  # air ... bone
        else:
            assert img.get_data_dtype() == np.uint8 and data.dtype == np.uint8
            assert data.min() >= 0 and data.max() == 255 and case.pad_value is None
            assert np.median(data[[0, -1], :, :]) < 80  # air around the body is dark in [-1250, 250]


def test_shapes_and_spacing_follow_the_profile(tiny_cases):
    prof = DEFAULT_PROFILES["tiny"]
    for case in tiny_cases:
        nz, ny, nx = case.ct.shape
        assert ny == nx and nx in prof["sizes"]
        assert prof["slices"][0] <= nz <= prof["slices"][1]
        sz, sy, sx = case.spacing
        assert sy == sx and prof["spacing_xy"][0] <= sx <= prof["spacing_xy"][1]
        assert case.lung.shape == case.infection.shape == case.ct.shape


# ------------------------------------------------------------------------------------ orientation
def test_non_lps_case_reorients_back_to_the_canonical_arrays(tiny_root, tiny_cases):
    root, _ = tiny_root
    codes = {}
    for case in tiny_cases:
        ct_img = nib.load(root / f"ct_scans/{case.case_id}_org.nii.gz")
        codes[case.case_id] = "".join(nib.aff2axcodes(ct_img.affine))
        assert codes[case.case_id] == case.orientation
        assert np.array_equal(to_canonical(ct_img), case.ct)
        for component, expected in (("lung_mask", case.lung), ("infection_mask", case.infection),
                                    ("lung_and_infection_mask", case.labels)):
            img = nib.load(root / f"{component}/{case.case_id}.nii.gz")
            assert np.allclose(img.affine, ct_img.affine)
            assert np.array_equal(to_canonical(img), expected)
        zooms = nib.affines.voxel_sizes(ct_img.affine)
        assert sorted(np.round(zooms, 4)) == sorted(np.round(case.spacing, 4))
    assert codes["synth_000"] == "LPS"
    assert any(code != "LPS" for code in codes.values())


@pytest.mark.parametrize("orientation", ["RAS", "RPS", "PLS", "SAR"])
def test_stored_orientation_round_trips(orientation):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # canonical (z, y, x)
    spacing = (2.5, 0.7, 0.7)
    img = make_image(to_stored(arr, orientation), stored_affine(spacing, arr.shape, orientation), np.int16)
    assert "".join(nib.aff2axcodes(img.affine)) == orientation
    assert np.array_equal(to_canonical(img), arr)
    # Every voxel keeps its world position whatever the storage (arr holds unique values).
    lps = make_image(to_stored(arr, "LPS"), stored_affine(spacing, arr.shape, "LPS"), np.int16)
    stored = np.asanyarray(img.dataobj)
    for z, y, x in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        idx = np.argwhere(stored == arr[z, y, x])[0]
        assert np.allclose(img.affine @ [*idx, 1], lps.affine @ [x, y, z, 1])


# ----------------------------------------------------------------------------- demo-sized realism
def test_demo_sized_set_has_plausible_infection_and_lung_density():
    # The demo profile at a third of its in-plane size (same field of view, so the same anatomy in mm).
    profile = dict(DEFAULT_PROFILES["demo"], sizes=[96], spacing_xy=[3.2, 4.8], model_size=64, slices=[24, 32])
    cases = [generate_case(i, profile, seed=3) for i in range(profile["n_cases"])]
    infected = sum(int(c.infection.sum()) for c in cases)
    segmented = sum(int(((c.lung > 0) | (c.infection > 0)).sum()) for c in cases)
    assert 0.04 <= infected / segmented <= 0.20
    assert any(c.infection.sum() == 0 for c in cases)
    assert sum(c.infection.sum() > 0 for c in cases) >= 4
    for c in cases:
        if c.source_kind == "hu":
            healthy = c.ct[(c.lung > 0) & (c.infection == 0)]
            assert -900 <= np.median(healthy) <= -780, c.case_id
            if c.infection.any():
                assert np.median(c.ct[c.infection > 0]) > np.median(healthy) + 150  # denser lesions
            body = c.ct[(c.lung == 0) & (c.ct > -500)]
            assert -150 < np.median(body) < 150  # soft tissue around the lungs


# ---------------------------------------------------------------------------------------- Kedro
def test_lazy_store_generates_each_case_once_in_partitioned_dataset_order(tiny_cases):
    store = LazyCaseStore("tiny", seed=0)
    loaders = store.loaders()
    assert list(loaders)[:4] == ["ct_scans/synth_000_org", "lung_mask/synth_000",
                                 "infection_mask/synth_000", "lung_and_infection_mask/synth_000"]
    images = {key: loaders[key]() for key in sorted(loaders)}  # PartitionedDataset.save's order
    assert store.generated == len(tiny_cases)
    for case in tiny_cases:
        assert np.array_equal(to_canonical(images[f"ct_scans/{case.case_id}_org"]), case.ct)
        assert np.array_equal(to_canonical(images[f"lung_and_infection_mask/{case.case_id}"]), case.labels)
    # Any other order still returns the right images.
    store2 = LazyCaseStore("tiny", seed=0)
    loaders2 = store2.loaders()
    assert np.array_equal(to_canonical(loaders2["infection_mask/synth_002"]()), tiny_cases[2].infection)
    assert np.array_equal(to_canonical(loaders2["ct_scans/synth_002_org"]()), tiny_cases[2].ct)
    assert np.array_equal(to_canonical(loaders2["lung_mask/synth_000"]()), tiny_cases[0].lung)


def test_kedro_node_writes_through_partitioned_dataset(tmp_path, tiny_cases, tiny_root):
    from kedro_datasets.partitions import PartitionedDataset

    from lungseg.pipelines.synthetic_data.nodes import generate_synthetic_dataset
    from lungseg.pipelines.synthetic_data.pipeline import create_pipeline

    volumes, metadata = generate_synthetic_dataset({"profile": "tiny", "seed": 0, "n_cases": 2})
    assert len(metadata) == 2 and len(volumes) == 8
    assert all(callable(v) for v in volumes.values())
    PartitionedDataset(path=str(tmp_path), dataset="lungseg.datasets.NiftiDataset",
                       filename_suffix=".nii.gz").save(volumes)
    img = nib.load(tmp_path / "lung_mask/synth_001.nii.gz")
    assert np.array_equal(to_canonical(img), tiny_cases[1].lung)
    root, _ = tiny_root  # the same bytes as write_dataset's
    for key in volumes:
        assert (tmp_path / f"{key}.nii.gz").read_bytes() == (root / f"{key}.nii.gz").read_bytes(), key

    pipe = create_pipeline()
    assert [n.name for n in pipe.nodes] == ["generate_synthetic_dataset"]
    assert pipe.inputs() == {"params:synthetic_data"}
    assert pipe.outputs() == {"synthetic_metadata", "synthetic_volumes"}


# ------------------------------------------------------------------------------------- profiles
def test_parameters_file_profiles_resolve():
    """The YAML picks a profile defined once in code (no mirror), as ``--params synthetic_data.profile=full`` does."""
    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_synthetic_data.yml").read_text())["synthetic_data"]
    assert params["profile"] in DEFAULT_PROFILES and not params["profiles"]
    for name in ("tiny", "demo", "full"):
        profile, seed, resolved_name = resolve_params({**params, "profile": name})
        assert resolved_name == name and seed == params["seed"]
        assert profile == resolve_profile(name) and profile["n_cases"] >= 1


def test_parameters_override_a_profile_key_by_key():
    base = {"profile": "tiny", "seed": 1, "n_cases": None}
    profile, _, _ = resolve_params({**base, "profiles": {"tiny": {"sizes": [96], "noise_hu": [1.0, 2.0]}}})
    assert profile == {**resolve_profile("tiny"), "sizes": [96], "noise_hu": [1.0, 2.0]}
    assert resolve_params({**base, "n_cases": 2})[0]["n_cases"] == 2
    own, _, name = resolve_params({**base, "profile": "mine", "profiles": {"mine": {**DEFAULT_PROFILES["tiny"]}}})
    assert name == "mine" and own == resolve_profile("tiny")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['profil'\]"):
        resolve_params({**base, "profil": "full"})
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_params({**base, "profiles": {"tiny": {"colour": "red"}}})
    with pytest.raises(ConfigError, match="synthetic_data.profiles.tiny must be a mapping"):
        resolve_params({**base, "profiles": {"tiny": [1, 2]}})


def test_full_profile_matches_the_real_set_size():
    full = resolve_profile("full")
    assert full["n_cases"] == 20
    assert min(full["slice_counts"]) == 39 and max(full["slice_counts"]) == 418
    assert 3000 <= sum(full["slice_counts"]) <= 4000
    assert set(full["sizes"]) == {512, 630}


@pytest.mark.parametrize(
    "bad, message",
    [
        ("nope", "unknown synthetic_data profile"),
        (dict(DEFAULT_PROFILES["tiny"], spacing_xy=[2.0, 1.0]), "spacing_xy"),
        (dict(DEFAULT_PROFILES["tiny"], slices=[2, 4]), "slices"),
        (dict(DEFAULT_PROFILES["tiny"], orientations=["LPX"]), "orientation"),
        (dict(DEFAULT_PROFILES["tiny"], source_kinds=["float"]), "source_kinds"),
        (dict(DEFAULT_PROFILES["tiny"], colour="red"), "unknown key"),
    ],
)
def test_bad_profiles_raise_config_error(bad, message):
    with pytest.raises(ConfigError, match=message):
        resolve_profile(bad)


def test_bad_params_raise_config_error():
    with pytest.raises(ConfigError, match="seed"):
        resolve_params({"profile": "tiny", "seed": -1})
    with pytest.raises(ConfigError, match="not defined"):
        resolve_params({"profile": "huge", "seed": 0})
