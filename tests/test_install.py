"""The install path: `make setup` leaves the TorchRec extra out; `make setup-torchrec` adds it without a conflict."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recipe(makefile: str, target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert match, f"no recipe for {target}"
    return [line.strip() for line in match.group(1).splitlines()]


def test_default_setup_installs_no_torchrec_and_the_extra_goes_first_then_no_deps_last() -> None:
    makefile = (ROOT / "Makefile").read_text()
    setup = _recipe(makefile, "$(VENV)/.installed")
    assert not any("torchrec" in line or "fbgemm" in line for line in setup)
    assert any("torch==2.13.0" in line for line in setup)  # pinned: a plain torch pulls the CUDA build
    extra = [line for line in _recipe(makefile, "$(VENV)/.installed-torchrec") if "pip install" in line]
    # the extra's dependencies first, torchrec / fbgemm last with --no-deps: pip then has no conflict to report
    assert "[dev,torchrec]" in extra[0]
    assert "--no-deps" in extra[-1] and "torchrec==1.8.0" in extra[-1] and "fbgemm-gpu-cpu==1.8.0" in extra[-1]


def test_ci_runs_the_torchrec_tests_and_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make setup-torchrec" in ci and "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()
