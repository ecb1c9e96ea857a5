"""examples/python/fashion_mnist.py (an ordinary PyTorch loop with ngd.torch.SINGD) against
`ngd train` with the same settings on a Fashion-MNIST subset. For the same starting point and
sample order, `ngd train` runs 40 steps and writes a checkpoint; then `ngd train --resume`
and the script (--init-from, which loads the parameters, libngd's optimizer state and the
epoch's order from it) each run the rest of the epoch. Their test accuracies must agree
within 0.5 points (they differ only by float rounding: torch's forward/backward vs ngd's)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import NGD, REPO

DATA = "/usr/share/datasets/fashion-mnist"
sys.path.insert(0, os.path.join(REPO, "examples", "python"))
ARGS = ["--subset", "12000", "--epochs", "1", "--widths", "128,128", "--lr", "0.01", "--damping", "0.01", "--T", "5"]

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "train-images-idx3-ubyte.gz")),
                                reason="dataset-fashion-mnist is not installed")


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_example_matches_ngd_train(tmp_path, schedule):
    import fashion_mnist

    ck, log = str(tmp_path / "ck"), str(tmp_path / "log.jsonl")
    args = ARGS + ["--schedule", schedule]
    common = [NGD, "train"] + args + ["--threads", "2", "--quiet"]
    subprocess.run(common + ["--max-steps", "40", "--checkpoint", ck, "--log", str(tmp_path / "a.jsonl")], check=True)
    subprocess.run(common + ["--resume", ck, "--log", log], check=True)
    evals = [json.loads(l) for l in open(log) if '"eval"' in l]
    acc_ngd = 100.0 * evals[-1]["test_accuracy"]
    acc_py = fashion_mnist.main(args + ["--init-from", ck, "--quiet"])
    print("ngd train %.2f%%, examples/python/fashion_mnist.py %.2f%%" % (acc_ngd, acc_py))
    assert acc_ngd > 70.0  # it learned something worth comparing
    assert abs(acc_py - acc_ngd) <= 0.5


def test_example_runs_on_its_own():
    import fashion_mnist

    acc = fashion_mnist.main(["--subset", "2560", "--epochs", "1", "--widths", "64", "--lr", "0.02", "--T", "5", "--quiet"])
    assert acc > 55.0


def test_example_refuses_an_augmented_run(tmp_path):
    """A checkpoint of an `ngd train --augment` run (version 5 records it) is refused: the
    script trains without augmentation, so it would continue another run."""
    import fashion_mnist

    ck = str(tmp_path / "ck")
    args = ["--subset", "2560", "--epochs", "1", "--widths", "64", "--T", "5"]
    subprocess.run([NGD, "train"] + args + ["--augment", "--max-steps", "2", "--threads", "1", "--quiet",
                                            "--checkpoint", ck, "--log", str(tmp_path / "a.jsonl")], check=True)
    with pytest.raises(SystemExit, match="a run with --augment; this script does not augment"):
        fashion_mnist.main(args + ["--init-from", ck, "--quiet"])
