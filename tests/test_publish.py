"""Publishing: one canonical setup cell in every notebook, the repository URL for Colab, README badges."""
import importlib.util
import shutil
import subprocess
import sys
import types

import nbformat
import pytest

from workshop_utils.apps import cli
from workshop_utils.tooling import publish
from workshop_utils.config import REPO_ROOT
from workshop_utils.core.errors import ToolingError

URL = "https://github.com/acme/car-damage-course"
OLD_CELL = '''# Setup: quiet TensorFlow logs, seeds, the run profile and the environment.
import importlib.util, subprocess, sys
WORKSHOP_REPO = "{url}"
if importlib.util.find_spec("workshop_utils") is None:
    subprocess.run(["git", "clone", "--depth", "1", WORKSHOP_REPO, "/content/workshop"], check=True)

from workshop_utils.config import setup
settings = setup(seed=0)
print(settings)'''


def test_every_notebook_has_the_canonical_setup_cell_and_the_readme_agrees():
    """Fails until `python -m workshop_utils publish --normalize` has run over new or edited notebooks."""
    assert publish.problems() == []


def _notebook(path, first_code, more=("x = 1",)):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell(first_code),
                *(nbformat.v4.new_code_cell(c) for c in more)]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old output")]
    nb.cells[1].execution_count = 3
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def course(tmp_path):
    """Three notebooks (canonical, old style with the old placeholder, old style with a fork's URL) + README."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "00_setup.ipynb", publish.setup_cell_source(None))
    _notebook(folder / "01_load_data.ipynb", OLD_CELL.format(url="https://github.com/your-org/car-damage-workshop"))
    _notebook(folder / "02_bottleneck.ipynb", publish.setup_cell_source(None), more=("plt.plot()", "y = 2"))
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "README.md", readme)
    return folder, readme


def test_normalize_rewrites_only_the_setup_cell_and_keeps_its_url(course):
    folder, readme = course
    _notebook(folder / "03_train.ipynb", OLD_CELL.format(url=URL + ".git"))
    before = nbformat.read(folder / "02_bottleneck.ipynb", as_version=4)
    text = readme.read_text(encoding="utf-8")
    assert publish.normalize(folder, readme) == [folder / "01_load_data.ipynb", folder / "03_train.ipynb"]
    assert readme.read_text(encoding="utf-8") == text, "the notebooks disagree on the URL: the README stays"

    old = publish.read_setup_cell(folder / "01_load_data.ipynb")
    assert old.canonical and old.repo_url is None, "the old placeholder is no repository"
    fork = publish.read_setup_cell(folder / "03_train.ipynb")
    assert fork.canonical and fork.source == publish.setup_cell_source(URL) and fork.branch == "main"
    nb = nbformat.read(folder / "03_train.ipynb", as_version=4)
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None
    assert [c.source for c in nb.cells[2:]] == ["x = 1"] and nb.cells[0].source == "# Title"
    assert nbformat.read(folder / "02_bottleneck.ipynb", as_version=4) == before
    assert publish.normalize(folder, readme) == [], "a second run changes nothing"


def test_publish_writes_the_url_into_every_notebook_and_badges_into_the_readme(course):
    folder, readme = course
    original = readme.read_text(encoding="utf-8")
    changed = publish.publish(URL + "/", branch="dev", folder=folder, readme=readme)
    assert changed == [*sorted(folder.glob("*.ipynb")), readme]
    for notebook in folder.glob("*.ipynb"):
        cell = publish.read_setup_cell(notebook)
        assert (cell.repo_url, cell.branch, cell.canonical) == (URL, "dev", True)
        assert f'WORKSHOP_REPO = "{URL}"' in cell.source and 'WORKSHOP_BRANCH = "dev"' in cell.source

    text = readme.read_text(encoding="utf-8")
    assert "| notebook | topic | time | Colab |" in text
    for name in ("00_setup", "01_load_data", "06_consume_model"):  # the README's table, not the folder
        badge = (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                 f"(https://colab.research.google.com/github/acme/car-damage-course/blob/dev/notebooks/{name}.ipynb)")
        row = next(line for line in text.splitlines() if f"(notebooks/{name}.ipynb)" in line and line.startswith("|"))
        assert row.endswith(f"| {badge} |"), row
    assert f"Published at **{URL}** (branch `dev`)" in text and "Not published yet" not in text
    assert publish.problems(folder, readme) == []

    assert publish.publish(URL, branch="dev", folder=folder, readme=readme) == [], "idempotent"
    publish.publish(None, folder=folder, readme=readme)  # unpublishing restores the README exactly
    assert readme.read_text(encoding="utf-8") == original
    assert sorted(p.name for p in folder.parent.rglob("*")) == sorted(
        ["notebooks", "README.md", "00_setup.ipynb", "01_load_data.ipynb", "02_bottleneck.ipynb"]), "no temporary files"


def test_check_names_what_is_not_canonical(course):
    folder, readme = course
    problems = publish.problems(folder, readme)
    assert problems == ["01_load_data.ipynb: the setup cell (cell 1) differs from the canonical one; run "
                        "`python -m workshop_utils publish --normalize`."]
    publish.publish(URL, folder=folder, readme=readme)
    publish.write_setup_cell(folder / "02_bottleneck.ipynb", "https://github.com/someone/else")
    problems = publish.problems(folder, readme)
    assert len(problems) == 1 and problems[0].startswith("The notebooks clone different repositories or branches (")
    assert "02_bottleneck.ipynb: https://github.com/someone/else (main)" in problems[0]

    publish.write_setup_cell(folder / "02_bottleneck.ipynb", URL)
    text = readme.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| [05_save_model]"))
    readme.write_text(text.replace(row, row.rsplit("|", 2)[0] + "|"), encoding="utf-8")  # a row without its badge
    assert publish.problems(folder, readme) == [
        f"README.md: its notebook table or Colab paragraph does not show the repository {URL} (branch main) and its "
        "Colab badges; run `python -m workshop_utils publish --normalize`."]
    assert publish.normalize(folder, readme) == [readme]
    assert readme.read_text(encoding="utf-8") == text


def test_bad_inputs_are_named(course, tmp_path):
    folder, readme = course
    with pytest.raises(ToolingError, match=r"--repo must be a GitHub repository URL like "
                       r"https://github.com/OWNER/REPO \(Colab opens notebooks from GitHub\), got 'gitlab.com/a/b'"):
        publish.publish("gitlab.com/a/b", folder=folder, readme=readme)
    with pytest.raises(ToolingError, match=r"--branch must be a git branch name like main, got 'a b'"):
        publish.publish(URL, branch="a b", folder=folder, readme=readme)
    _notebook(folder / "05_save_model.ipynb", "import numpy as np")
    with pytest.raises(ToolingError, match=r"05_save_model.ipynb: the first code cell \(cell 1\) is not the "
                       r"setup cell .* copy the first code cell of notebooks/00_setup.ipynb there"):
        publish.publish(URL, folder=folder, readme=readme)
    assert publish.read_setup_cell(folder / "00_setup.ipynb").repo_url is None, "nothing written when one fails"
    (folder / "05_save_model.ipynb").unlink()
    readme.write_text("# A README without the markers\n", encoding="utf-8")
    with pytest.raises(ToolingError, match=r"README.md lacks the line <!-- notebook-table -->"):
        publish.publish(URL, folder=folder, readme=readme)


def test_the_command_line(course, capsys):
    folder, readme = course
    paths = ["--notebooks", str(folder), "--readme", str(readme)]
    assert cli.main(["publish", "--check", *paths]) == 1
    assert "01_load_data.ipynb: the setup cell (cell 1) differs" in capsys.readouterr().err
    assert cli.main(["publish", "--normalize", *paths]) == 0
    assert capsys.readouterr().out == "publish: normalized the setup cell of 01_load_data.ipynb.\n"
    assert cli.main(["publish", "--repo", URL, *paths]) == 0
    assert capsys.readouterr().out.startswith(f"publish: set {URL} (branch main) in 00_setup.ipynb, ")
    assert cli.main(["publish", "--check", "--strict", *paths]) == 0, "published: nothing to warn about"
    assert capsys.readouterr().err == ""
    assert cli.main(["publish", "--repo", "https://example.com/x", *paths]) == 2
    assert capsys.readouterr().err.startswith("error: --repo must be a GitHub repository URL like")


def test_check_names_the_unset_url_a_warning_unless_strict(course, capsys):
    """An unpublished course is canonical (CI's own check passes) but --check says the URL is unset; --strict
    fails on it, for the check before a release."""
    folder, readme = course
    paths = ["--notebooks", str(folder), "--readme", str(readme)]
    publish.normalize(folder, readme)
    assert publish.problems(folder, readme) == [] and publish.unset_repo(folder) == publish.UNSET_REPO
    assert cli.main(["publish", "--check", *paths]) == 0
    out, err = capsys.readouterr()
    assert out == "All 3 notebooks have the canonical setup cell; the course's URL is not set (see the warning).\n"
    assert err == f"warning: {publish.UNSET_REPO}\n"
    assert err.startswith("warning: WORKSHOP_REPO, the course's public GitHub URL, is not set in the notebooks' setup "
                          "cells") and "publish --repo https://github.com/OWNER/REPO" in err

    assert cli.main(["publish", "--check", "--strict", *paths]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == publish.UNSET_REPO + "\n"

    publish.publish(URL, folder=folder, readme=readme)
    assert publish.unset_repo(folder) is None
    assert cli.main(["publish", "--check", *paths]) == 0
    assert capsys.readouterr() == ("All 3 notebooks have the canonical setup cell.\n", "")


def test_strict_without_check_and_a_missing_readme_are_one_line(course, capsys):
    folder, readme = course
    assert cli.main(["publish", "--normalize", "--strict", "--notebooks", str(folder)]) == 2
    assert capsys.readouterr().err == ("error: --strict only applies with --check: run `python -m workshop_utils "
                                       "publish --check --strict`.\n")
    missing = folder.parent / "GONE.md"
    assert cli.main(["publish", "--check", "--notebooks", str(folder), "--readme", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: No such file or directory (does not exist; check the path)\n"


def test_this_repositorys_check_passes_while_its_url_is_unset(capsys):
    """CI stays green: this repository leaves WORKSHOP_REPO unset on purpose, so --check warns and exits 0."""
    assert cli.main(["publish", "--check"]) == 0
    err = capsys.readouterr().err
    assert (f"warning: {publish.UNSET_REPO}\n" in err) == (publish.unset_repo() is not None), err


class _Cloned(Exception):
    pass


@pytest.fixture
def on_colab_without_the_package(monkeypatch):
    """The setup cell as Colab runs it: workshop_utils not importable, google.colab loaded; git is recorded."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "workshop_utils" else
                        find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        raise _Cloned  # stop before the cell reads the clone's requirements.txt

    monkeypatch.setattr(subprocess, "run", run)
    return commands


def test_on_colab_the_unpublished_setup_cell_says_in_one_line_what_to_set(on_colab_without_the_package):
    with pytest.raises(ModuleNotFoundError) as error:
        exec(publish.setup_cell_source(None), {})
    assert str(error.value) == ("workshop_utils is missing and WORKSHOP_REPO is not set: put the course's GitHub URL "
                                "in WORKSHOP_REPO at the top of this cell and run it again.")
    assert on_colab_without_the_package == [], "nothing cloned"


def test_on_colab_the_published_setup_cell_clones_the_repository(on_colab_without_the_package):
    with pytest.raises(_Cloned):
        exec(publish.setup_cell_source(URL, "dev"), {})
    assert on_colab_without_the_package == [["git", "clone", "--depth", "1", "--branch", "dev", URL,
                                             "/content/workshop"]]


def test_locally_the_setup_cell_says_to_pip_install(on_colab_without_the_package, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab")
    with pytest.raises(ModuleNotFoundError, match=r"workshop_utils is missing: run `pip install -r requirements.txt` "
                       r"in the repository folder, then restart the kernel\."):
        exec(publish.setup_cell_source(URL), {})


def test_the_setup_cell_passes_profile_to_setup():
    source = publish.setup_cell_source(None)
    assert 'PROFILE = None  # or "quick" / "full"' in source.splitlines()[1]
    assert "settings = setup(seed=0, profile=PROFILE)" in source
    compile(source, "setup cell", "exec")
