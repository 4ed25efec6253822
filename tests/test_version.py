"""One version, shown wherever a user looks for it: `mnistlab --version`, the page's footer, /api/health,
and the changelog."""

import re
from pathlib import Path

import pytest

import mnistlab
from mnistlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_mnistlab_version_prints_the_packages_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mnistlab {mnistlab.__version__}"


def test_the_page_footer_and_api_health_show_the_version(tiny_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistlab.commands.serve import create_app, load_models

    with TestClient(create_app(load_models([tiny_run]))) as client:
        assert client.get("/api/health").json()["version"] == mnistlab.__version__
        page = client.get("/").text
    footer = page.split('<footer class="foot">')[1].split("</footer>")[0]
    assert f"mnistlab {mnistlab.__version__}" in footer and "{{" not in page


def test_the_changelog_starts_with_unreleased_changes_then_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "Unreleased"
    assert any(h.startswith(mnistlab.__version__) for h in headings[1:]), headings
    sections = re.split(r"^## .+$", text, flags=re.M)[1:]
    assert all(re.search(r"^- \S", body, re.M) for body in sections), "every section lists its changes"
