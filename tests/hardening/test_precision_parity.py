"""#24 item 3: inference in bf16 (`lungseg predict --precision mixed_bfloat16`) keeps the float32 masks."""

from __future__ import annotations

from hardening_helpers import (
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)


def test_predict_in_bf16_gives_nearly_the_float32_masks(tmp_path, rule_models, capsys):
    """#24 item 3, on a synthetic volume: the same float32 models, predicting in bf16 (--precision)."""
    import json

    import nibabel as nib
    import numpy as np

    from lungseg.evaluation.metrics import dice

    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(shape=(16, 96, 96), seed=7)[0])
    masks = {}
    for precision in ("float32", "mixed_bfloat16"):
        out = tmp_path / precision
        assert predict(src, out, rule_models, "--precision", precision)[0] == 0, capsys.readouterr().err
        masks[precision] = np.asarray(nib.load(str(out / "lung_and_infection_mask.nii.gz")).dataobj)
        assert json.loads((out / "report.json").read_text())["precision"] == precision
    assert masks["float32"].any()
    for label, name in ((1, "left lung"), (2, "right lung"), (3, "infection")):
        a, b = masks["float32"] == label, masks["mixed_bfloat16"] == label
        assert a.any() and dice(a, b) >= 0.995, (name, dice(a, b))
        print(f"{name}: Dice float32 vs bf16 {dice(a, b):.4f}")
