"""#28 row 19 (cosmetic): nibabel's header warning printed once, not twice; outputs created with the
permissions the umask gives (not tempfile's private 0700 / 0600); ``fetch-data -q`` prints nothing."""

from __future__ import annotations

import os
import stat

from hardening_helpers import (
    leftovers,
    patch_nifti_header,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)
from test_fetch import kaggle_zip

from lungseg.cli import main
from lungseg.fetch import LICENSE_AND_CITATION
from lungseg.fetch.sources import LICENSE_FILE


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_row19_a_fixed_nifti_header_is_reported_once(tmp_path, caplog):
    """nibabel's note on a header it fixes came out twice per read: the header was parsed twice (nib.load,
    then the isal stream), and nibabel's own bare stderr handler printed beside the application's."""
    import logging

    from lungseg.inference.readers import read_input
    from lungseg.limits import load_limits
    from lungseg.volume import NIBABEL_LOGGER

    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=11)[0])
    bad = patch_nifti_header(src, tmp_path / "fixed.nii.gz", pixdim=(0, 0.8, 0.8, 2.5, 1, 1, 1, 1))
    nib_logger = logging.getLogger(NIBABEL_LOGGER)
    nib_logger.addHandler(bare := logging.StreamHandler())  # as nibabel's import does
    try:
        with caplog.at_level(logging.INFO):
            read_input(bad, load_limits())
    finally:
        nib_logger.removeHandler(bare)
    notes = [r for r in caplog.records if r.name == NIBABEL_LOGGER]
    assert len(notes) == 1 and notes[0].getMessage().startswith("pixdim[0] (qfac) should be 1"), notes
    assert logging.getLogger().handlers and bare not in nib_logger.handlers  # one printer: the application's


def test_row19_outputs_follow_the_umask(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=12)[0])
    old = os.umask(0o027)
    try:
        assert predict(src, tmp_path / "out", rule_models)[0] == 0, capsys.readouterr().err
        os.umask(0o022)
        assert predict(src, tmp_path / "out2", rule_models)[0] == 0
    finally:
        os.umask(old)
    for out, folder, file in ((tmp_path / "out", 0o750, 0o640), (tmp_path / "out2", 0o755, 0o644)):
        assert _mode(out) == folder and _mode(out / "overlays") == folder
        for name in ("report.json", ".lungseg-output.json", "lung_mask.nii.gz"):
            assert _mode(out / name) == file, (out, name, oct(_mode(out / name)))
    assert leftovers(tmp_path) == []


def test_row19_fetch_data_quiet_prints_nothing_and_installs_the_licence(tmp_path, capsys):
    archive = tmp_path / "archive.zip"
    archive.write_bytes(kaggle_zip(tmp_path))
    old = os.umask(0o022)
    try:
        code = main(["fetch-data", "-q", "--dest", str(tmp_path / "raw"), "--from", str(archive), "--no-progress"])
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    assert code == 0 and captured.out == "" and "licence" not in captured.err.lower(), captured
    assert LICENSE_AND_CITATION.strip() in (tmp_path / "raw" / LICENSE_FILE).read_text()
    assert _mode(tmp_path / "raw") == 0o755 and _mode(tmp_path / "raw" / "metadata.csv") == 0o644
