"""Test doubles shared by the test suite, and the places in the repository tests read."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
DOCS = ROOT / "docs"
FAKE_NVML = Path(__file__).resolve().parent / "fake_nvml"  # a pynvml stand-in with fake GPUs
