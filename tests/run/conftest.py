"""Fixtures of the run tests."""
import pytest

from helpers import write_ppl_profile


@pytest.fixture
def ppl_profile(tmp_path):
    """ppl_profile(min_retention, name=...) -> a profile file (see ``write_ppl_profile``)."""

    def make(min_retention: float, name: str = "profile.yaml"):
        return write_ppl_profile(tmp_path, min_retention, name)

    make.text = tmp_path / "text.txt"
    write_ppl_profile(tmp_path, 0.5)  # the text exists before a test reads make.text
    return make
