"""Every error class's exit code is documented, in the README's table and in `edgec --help`."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from edgec.cli import cli
from edgec.compiler.errors import ALL_ERRORS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_and_help_list_every_exit_code():
    table = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    help_text = CliRunner().invoke(cli, ["--help"]).output
    for cls in ALL_ERRORS:
        assert cls.exit_code in documented, f"{cls.__name__} exits {cls.exit_code}, missing from the README table"
        assert re.search(rf"\b{cls.exit_code} ", help_text), f"{cls.__name__}: {cls.exit_code} not in --help"
    assert {0, 1, 130} <= documented
