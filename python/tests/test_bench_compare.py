"""bench/compare.py (`make bench-compare`: PyTorch and `ngd bench train` side by side) run end
to end on a tiny configuration of every model it times by default: both sides' models must have
the same parameter counts, and a timed round must give a row per model and optimizer with
positive times on both sides. (Once `ngd bench train` began refusing --context for models
without one, compare.py passed it for every model and failed on its first run.) The timings
themselves are benchmarks, not checked here."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCRIPT = os.path.join(ROOT, "bench", "compare.py")
NGD = os.environ.get("NGD_BIN", os.path.join(ROOT, "build", "ngd"))


def run(*args):
    r = subprocess.run([sys.executable, SCRIPT, "--ngd", NGD, "--python", sys.executable,
                        "--threads", "2", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_params_only_counts_equal_on_every_default_model():
    out = run("--params-only", "--models", "mlp,cnn,chargpt")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:] if ln.strip()}
    assert set(rows) == {"mlp", "cnn", "chargpt"}, out
    for m, r in rows.items():
        assert r[-1] == "equal" and r[1] == r[2] and int(r[1]) > 1000, out


def test_a_timed_round_gives_both_sides_times():
    out = run("--models", "mlp,chargpt", "--optims", "sgd", "--singd", "", "--rounds", "1",
              "--steps", "1", "--warmup", "1", "--batch", "8", "--context", "16")
    for m in ("mlp", "chargpt"):
        row = [ln for ln in out.splitlines() if re.match(rf"\|?\s*{m}\s*\|\s*sgd\b", ln)
               or re.match(rf"{m}\s+sgd\s", ln)]
        assert len(row) == 1, out
        nums = [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+", row[0])]
        assert len(nums) >= 3 and all(x > 0 for x in nums[:3]), row[0]
