"""``python -m workshop_utils publish``: the canonical setup cell of every notebook (which clones the course's public
repository on Colab, or says in one line what to set) and the README's Colab badges; ``--check`` lists deviations."""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from workshop_utils.config import REPO_ROOT
from workshop_utils.core.errors import ToolingError
from workshop_utils.core.fsutil import atomic_write

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
README = REPO_ROOT / "README.md"
DEFAULT_BRANCH = "main"
TABLE_MARKER = "<!-- notebook-table -->"
REPO_MARKER = "<!-- colab-repo -->"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
OLD_PLACEHOLDERS = ("https://github.com/your-org/car-damage-workshop",)  # never a real repository
_GITHUB = re.compile(r"https://github\.com/(?P<owner>[A-Za-z0-9_.-]+)/(?P<repo>[A-Za-z0-9_.-]+?)(?:\.git)?/?")
_BRANCH = re.compile(r"[A-Za-z0-9._/-]+")

_TEMPLATE = '''\
# Setup: quiet TensorFlow logs, seeds, the run profile and the environment.
PROFILE = None  # or "quick" / "full"; None: $WORKSHOP_PROFILE if set, else "full"
WORKSHOP_REPO = {repo}  # the course's GitHub URL, cloned on Colab
WORKSHOP_BRANCH = {branch}
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("workshop_utils") is None:
    if "google.colab" not in sys.modules:
        raise ModuleNotFoundError("workshop_utils is missing: run `pip install -r requirements.txt` "
                                  "in the repository folder, then restart the kernel.")
    if not WORKSHOP_REPO:
        raise ModuleNotFoundError("workshop_utils is missing and WORKSHOP_REPO is not set: put the course's "
                                  "GitHub URL in WORKSHOP_REPO at the top of this cell and run it again.")
    if not os.path.isdir("/content/workshop/.git"):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", WORKSHOP_BRANCH, WORKSHOP_REPO,
                        "/content/workshop"], check=True)
    wanted = [line for line in open("/content/workshop/requirements.txt").read().splitlines()
              if line.strip() and not line.startswith(("#", "jupyterlab"))]  # Colab brings its own Jupyter
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], cwd="/content/workshop", check=True)
    sys.path.insert(0, "/content/workshop")

from workshop_utils.config import setup
settings = setup(seed=0, profile=PROFILE)
print(settings)'''


def normalize_repo_url(url: str) -> str:
    """``https://github.com/OWNER/REPO`` from a GitHub URL (``.git`` and a trailing slash dropped)."""
    match = _GITHUB.fullmatch(url.strip())
    if not match:
        raise ToolingError(f"--repo must be a GitHub repository URL like https://github.com/OWNER/REPO (Colab opens "
                           f"notebooks from GitHub), got {url!r}.")
    return f"https://github.com/{match['owner']}/{match['repo']}"


def _check_branch(branch: str) -> str:
    if not _BRANCH.fullmatch(branch) or branch.startswith("-"):
        raise ToolingError(f"--branch must be a git branch name like main, got {branch!r}.")
    return branch


def setup_cell_source(repo_url: str | None, branch: str = DEFAULT_BRANCH) -> str:
    """The canonical first code cell of every notebook, cloning ``repo_url`` on Colab (None: not published)."""
    repo = f'"{normalize_repo_url(repo_url)}"' if repo_url else "None"
    return _TEMPLATE.format(repo=repo, branch=f'"{_check_branch(branch)}"')


@dataclass(frozen=True)
class SetupCell:
    """Where a notebook's setup cell is and the URL and branch it holds."""

    notebook: Path
    index: int  # index in the notebook's cells
    source: str
    repo_url: str | None
    branch: str

    @property
    def canonical(self) -> bool:
        return self.source == setup_cell_source(self.repo_url, self.branch)


def _assigned(source: str, name: str) -> str | None:
    """The string (or None) assigned to ``name`` at the start of a line of the cell, if any."""
    match = re.search(rf"^{name}\s*=\s*(.+?)\s*(?:#.*)?$", source, re.M)
    if not match:
        return None
    try:
        value = ast.literal_eval(match[1])
        if value is None or isinstance(value, str):
            return value or None
    except (ValueError, SyntaxError):
        pass
    raise ToolingError(f"{name} = {match[1]} is not a plain string or None.")


def read_setup_cell(notebook: Path) -> SetupCell:
    """The first code cell of a notebook, which must be the setup cell (it calls workshop_utils' setup)."""
    cells = nbformat.read(notebook, as_version=4).cells
    index = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"), None)
    if index is None:
        raise ToolingError(f"{notebook.name} has no code cell: its first code cell must be the setup cell.")
    source = cells[index].source
    if "workshop_utils" not in source or "setup(" not in source:
        raise ToolingError(f"{notebook.name}: the first code cell (cell {index}) is not the setup cell (it does not "
                           "call workshop_utils' setup); copy the first code cell of notebooks/00_setup.ipynb there.")
    try:
        url = _assigned(source, "WORKSHOP_REPO")
        branch = _assigned(source, "WORKSHOP_BRANCH") or DEFAULT_BRANCH
    except ToolingError as error:
        raise ToolingError(f"{notebook.name}, setup cell: {error}") from None
    if url is not None and url not in OLD_PLACEHOLDERS:
        try:
            url = normalize_repo_url(url)
        except ToolingError as error:
            raise ToolingError(f"{notebook.name}, setup cell: WORKSHOP_REPO: {error}") from None
    else:
        url = None
    return SetupCell(notebook, index, source, url, branch)


def write_setup_cell(notebook: Path, repo_url: str | None, branch: str = DEFAULT_BRANCH) -> bool:
    """Replace a notebook's setup cell with the canonical one (atomically); True when the file changed."""
    found = read_setup_cell(notebook)
    wanted = setup_cell_source(repo_url, branch)
    if found.source == wanted:
        return False
    nb = nbformat.read(notebook, as_version=4)
    cell = nb.cells[found.index]
    cell.source = wanted
    cell.outputs = []
    cell.execution_count = None
    atomic_write(notebook, nbformat.writes(nb) + "\n")
    return True


def notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The course's notebooks, in order."""
    found = sorted(folder.glob("*.ipynb"))
    if not found:
        raise ToolingError(f"No notebooks in {folder}.")
    return found


def colab_url(repo_url: str, notebook: str, branch: str = DEFAULT_BRANCH) -> str:
    """Colab's address of a notebook in a GitHub repository."""
    owner_repo = normalize_repo_url(repo_url).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{notebook}.ipynb"


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def readme_with_repo(text: str, repo_url: str | None, branch: str = DEFAULT_BRANCH) -> str:
    """The README with the URL in its Colab section and a Colab badge per notebook (a "Colab" column)."""
    lines = text.split("\n")
    for missing in (TABLE_MARKER, REPO_MARKER):
        if missing not in lines:
            raise ToolingError(f"README.md lacks the line {missing}; restore it (the notebook table and the "
                               "Colab section are found by these markers).")
    start = lines.index(TABLE_MARKER) + 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    header, rows = _cells(lines[start]), [_cells(r) for r in lines[start + 2 : end]]
    if header[-1] == "Colab":  # drop the old badges (a row may lack its badge cell)
        rows = [r[:-1] if len(r) == len(header) else r for r in rows]
        header = header[:-1]
    if repo_url:
        table = [_row([*header, "Colab"]), "|" + "---|" * (len(header) + 1)]
        for cells in rows:
            name = re.search(r"notebooks/([^/)]+)\.ipynb", cells[0])
            badge = f"[![Open in Colab]({COLAB_BADGE})]({colab_url(repo_url, name[1], branch)})" if name else ""
            table.append(_row([*cells, badge]))
    else:
        table = [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)]
    lines[start:end] = table

    at = lines.index(REPO_MARKER) + 1
    stop = at
    while stop < len(lines) and lines[stop].strip():
        stop += 1
    if repo_url:
        paragraph = (f"Published at **{normalize_repo_url(repo_url)}** (branch `{branch}`): every notebook's first "
                     "cell clones it on Colab, and the Colab column of the notebook table opens each notebook there.")
    else:
        paragraph = ("Not published yet: `WORKSHOP_REPO` is empty, so on Colab the first cell stops and says to set "
                     "it. Whoever publishes the course runs `python -m workshop_utils publish --repo "
                     "https://github.com/OWNER/REPO` once.")
    lines[at:stop] = [paragraph]
    return "\n".join(lines)


def publish(repo_url: str | None, branch: str = DEFAULT_BRANCH, folder: Path = NOTEBOOKS_DIR,
            readme: Path = README) -> list[Path]:
    """Write the URL and branch into every notebook's setup cell and the README; the files that changed."""
    if repo_url is not None:
        repo_url = normalize_repo_url(repo_url)
    _check_branch(branch)
    found = notebooks(folder)
    for notebook in found:
        read_setup_cell(notebook)  # every notebook must qualify before any is written
    readme_with_repo(readme.read_text(encoding="utf-8"), repo_url, branch)  # the README qualifies too
    changed = [nb for nb in found if write_setup_cell(nb, repo_url, branch)]
    if _write_readme(readme, repo_url, branch):
        changed.append(readme)
    return changed


def _write_readme(readme: Path, repo_url: str | None, branch: str) -> bool:
    """Bring the README's Colab paragraph and notebook table in line with the URL (atomically); True if changed."""
    text = readme.read_text(encoding="utf-8")
    updated = readme_with_repo(text, repo_url, branch)
    if updated == text:
        return False
    atomic_write(readme, updated)
    return True


def normalize(folder: Path = NOTEBOOKS_DIR, readme: Path | None = README) -> list[Path]:
    """Rewrite every notebook's setup cell to the canonical one, keeping its URL and branch, and the README's
    table and Colab paragraph when the notebooks agree on one URL; the files that changed."""
    cells = [read_setup_cell(nb) for nb in notebooks(folder)]
    changed = [c.notebook for c in cells if write_setup_cell(c.notebook, c.repo_url, c.branch)]
    targets = {(c.repo_url, c.branch) for c in cells}
    if readme is not None and len(targets) == 1 and _write_readme(readme, *targets.pop()):
        changed.append(readme)
    return changed


def problems(folder: Path = NOTEBOOKS_DIR, readme: Path | None = README) -> list[str]:
    """What is not canonical: setup cells that differ from the template, notebooks that disagree on the
    URL or branch, and a README that does not show the notebooks' URL."""
    found: list[str] = []
    cells: list[SetupCell] = []
    for notebook in notebooks(folder):
        try:
            cell = read_setup_cell(notebook)
        except ToolingError as error:
            found.append(str(error))
            continue
        cells.append(cell)
        if not cell.canonical:
            found.append(f"{notebook.name}: the setup cell (cell {cell.index}) differs from the canonical one; run "
                         "`python -m workshop_utils publish --normalize`.")
    targets = {(c.repo_url, c.branch) for c in cells}
    if len(targets) > 1:
        listed = ", ".join(f"{c.notebook.name}: {c.repo_url} ({c.branch})" for c in cells)
        found.append(f"The notebooks clone different repositories or branches ({listed}); run "
                     "`python -m workshop_utils publish --repo URL`.")
    elif targets and readme is not None:
        repo_url, branch = targets.pop()
        text = readme.read_text(encoding="utf-8")
        try:
            if readme_with_repo(text, repo_url, branch) != text:
                shown = f"the repository {repo_url} (branch {branch}) and its Colab badges" if repo_url else \
                    "that the course is not published yet (no Colab column)"
                found.append(f"{readme.name}: its notebook table or Colab paragraph does not show {shown}; run "
                             "`python -m workshop_utils publish --normalize`.")
        except ToolingError as error:
            found.append(str(error))
    return found


UNSET_REPO = ("WORKSHOP_REPO, the course's public GitHub URL, is not set in the notebooks' setup cells, so on Colab "
              "their first cell stops and asks for it; whoever publishes the course sets it with "
              "`python -m workshop_utils publish --repo https://github.com/OWNER/REPO`.")


def unset_repo(folder: Path = NOTEBOOKS_DIR) -> str | None:
    """:data:`UNSET_REPO` while no notebook's setup cell holds a repository URL (not published yet), else None;
    setup cells that cannot be read, or that disagree, are :func:`problems`' to report."""
    cells = []
    for notebook in notebooks(folder):
        try:
            cells.append(read_setup_cell(notebook))
        except ToolingError:
            continue
    return UNSET_REPO if cells and not any(c.repo_url for c in cells) else None


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``publish`` subcommand of ``python -m workshop_utils``."""
    parser = commands.add_parser(
        "publish",
        help="set the course's public GitHub URL in every notebook and the README (Colab badges)",
        description="Writes the repository URL into every notebook's first (setup) cell, which clones it on "
        "Colab, and into the README, whose notebook table gets an 'Open in Colab' badge per notebook.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--repo", help="the public GitHub URL, e.g. https://github.com/OWNER/REPO")
    action.add_argument("--normalize", action="store_true",
                        help="rewrite every notebook's setup cell to the canonical one, keeping its URL")
    action.add_argument("--check", action="store_true",
                        help="list setup cells and README lines that are not canonical; exit 1 if any. Warns "
                        "(exit 0) while WORKSHOP_REPO, the course's URL, is not set")
    parser.add_argument("--strict", action="store_true",
                        help="with --check: an unset WORKSHOP_REPO is a problem too (exit 1), for the check before "
                        "a release")
    parser.add_argument("--branch", default=DEFAULT_BRANCH, help=f"the branch Colab opens (default {DEFAULT_BRANCH})")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Carry out ``publish``; returns the exit code."""
    if args.strict and not args.check:
        raise ToolingError("--strict only applies with --check: run `python -m workshop_utils publish --check "
                           "--strict`.")
    if args.check:
        found = problems(args.notebooks, args.readme)
        unset = unset_repo(args.notebooks)
        if unset and args.strict:
            found.append(unset)
        for line in found:
            print(line, file=sys.stderr)
        if unset and not args.strict:
            print(f"warning: {unset}", file=sys.stderr)
        if not found:
            print(f"All {len(notebooks(args.notebooks))} notebooks have the canonical setup cell"
                  + ("; the course's URL is not set (see the warning)." if unset else "."))
        return 1 if found else 0
    if args.normalize:
        changed = normalize(args.notebooks, args.readme)
    else:
        changed = publish(args.repo, args.branch, args.notebooks, args.readme)
    what = "normalized the setup cell of" if args.normalize else f"set {normalize_repo_url(args.repo)} " \
        f"(branch {args.branch}) in"
    names = ", ".join(p.name for p in changed) or "nothing (already up to date)"
    print(f"publish: {what} {names}.")
    return 0
