"""Shared fixtures of the ngd Python tests (run by tests/test_python.sh)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))

# the ngd command of the build under test (tests/test_python.sh sets it)
NGD = os.environ.get("NGD_BIN", os.path.join(REPO, "build", "ngd"))
ORACLE = os.environ.get("NGD_ORACLE", os.path.join(os.path.dirname(REPO), "shared", "oracle"))
