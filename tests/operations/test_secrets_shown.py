"""The catalog password never reaches a printed line."""

from dagster_project.cli.main import main
from tests.platform import make_settings


def test_database_url_shown_masks_the_password(tmp_path):
    settings = make_settings(tmp_path, "postgresql://astro:s3cret@db.example:5432/catalog")
    assert "s3cret" not in settings.database_url_shown
    assert settings.database_url_shown == "postgresql://astro:***@db.example:5432/catalog"
    assert "s3cret" not in make_settings(tmp_path, "not a url s3cret").database_url_shown


def test_migrate_prints_the_catalog_without_its_password(tmp_path, postgres_url, monkeypatch, capsys):
    from sqlalchemy import make_url

    url = make_url(postgres_url).set(password="s3cret").render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)  # trust authentication: the password is ignored by the server
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path / "var"))
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "***" in out
