"""A password never reaches an output or a file name, whatever characters it holds."""

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.connections import redact
from bench.storage import ask_lock

PASSWORDS = ["se/cr3t", "se?cr3t", "se#cr3t", "se@cr3t", "se%cr3t", "s:e/c?r#e@t%cr3t"]


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_password_with_url_characters_is_masked_in_every_error(password, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://bench:{password}@127.0.0.1:1/optuna"
    assert redact(url) == "postgresql://bench:***@127.0.0.1:1/optuna"
    for command in (["run", "--variant", "gan", "--study", "quick", "--storage", url],
                    ["leaderboard", "--study", "quick", "--tracking-uri", url.replace("optuna", "mlflow")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "cr3t" not in result.output + result.stderr, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("Error: ") and "bench:***@" in line, line


def test_a_password_in_a_sqlite_query_names_no_file(tmp_path):
    with ask_lock(f"sqlite:///{tmp_path}/optuna.db?password=cr3t"):
        pass
    assert [path.name for path in tmp_path.iterdir()] == ["optuna.db.ask-lock"]
