"""bf16 inference parity of a trained network (#24 item 3): a small U-Net (96 px, base 8, depth 3) is
trained in float32 for 6 epochs on the synthetic ellipse slices of ``bench_train.py``, then predicts its
64 held-out slices in float32 and, with the same weights, in bf16 (``lungseg.models.precision.with_precision``);
prints the Dice of each against the truth and of the two masks against each other.

    python benchmarks/bench_precision_parity.py
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import synthetic_slices

from lungseg.models import build_model, compile_model, set_seeds
from lungseg.models.precision import with_precision


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def main() -> int:
    set_seeds(0)
    images, masks = synthetic_slices(256, 96, seed=0)
    x = images[..., None].astype("float32") / 255
    y = masks[..., None].astype("float32")
    model = compile_model(build_model("unet", 96, {"base_filters": 8, "depth": 3, "bn_momentum": 0.9}),
                          loss="bce_dice", learning_rate=1e-3)
    start = time.time()
    model.fit(x[:192], y[:192], batch_size=16, epochs=6, verbose=0)
    print(f"trained in float32 in {time.time() - start:.0f} s")
    truth = y[192:] > 0.5
    p32 = model.predict(x[192:], verbose=0) > 0.5
    p16 = with_precision(model, "mixed_bfloat16").predict(x[192:], verbose=0) > 0.5
    print(f"held-out Dice: float32 vs truth {dice(p32, truth):.4f}, bf16 vs truth {dice(p16, truth):.4f}, "
          f"bf16 vs float32 masks {dice(p16, p32):.4f} (target >= 0.995)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
