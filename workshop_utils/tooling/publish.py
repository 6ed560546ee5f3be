"""``python -m workshop_utils publish``: the canonical setup cell of every notebook (it clones the course's public
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
_BRANCH = re.compile(r"(?!-)[A-Za-z0-9._/-]+")
UNSET_REPO = ("WORKSHOP_REPO, the course's public GitHub URL, is not set in the notebooks' setup cells, so on Colab "
              "their first cell stops and asks for it; whoever publishes the course sets it with "
              "`python -m workshop_utils publish --repo https://github.com/OWNER/REPO`.")

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


def setup_cell_source(repo_url: str | None, branch: str = DEFAULT_BRANCH) -> str:
    """The canonical first code cell of every notebook, cloning ``repo_url`` on Colab (None: not published)."""
    repo = f'"{normalize_repo_url(repo_url)}"' if repo_url else "None"
    if not _BRANCH.fullmatch(branch):
        raise ToolingError(f"--branch must be a git branch name like main, got {branch!r}.")
    return _TEMPLATE.format(repo=repo, branch=f'"{branch}"')


@dataclass(frozen=True)
class SetupCell:
    notebook: Path
    index: int  # in the notebook's cells
    source: str
    repo_url: str | None
    branch: str

    @property
    def canonical(self) -> bool:
        return self.source == setup_cell_source(self.repo_url, self.branch)


def _assigned(source: str, name: str) -> str | None:
    """The string (or None) assigned to ``name`` at the start of a line of the cell, if any."""
    match = re.search(rf"^{name}\s*=\s*(.+?)\s*(?:#.*)?$", source, re.M)
    try:
        value = ast.literal_eval(match[1]) if match else None
    except (ValueError, SyntaxError):
        value = ...
    if value is not None and not isinstance(value, str):
        raise ToolingError(f"{name} = {match[1]} is not a plain string or None.")
    return value or None


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
    where = f"{notebook.name}, setup cell: "
    try:
        url = _assigned(source, "WORKSHOP_REPO")
        branch = _assigned(source, "WORKSHOP_BRANCH") or DEFAULT_BRANCH
        where += "WORKSHOP_REPO: "
        url = None if url in (None, *OLD_PLACEHOLDERS) else normalize_repo_url(url)
    except ToolingError as error:
        raise ToolingError(f"{where}{error}") from None
    return SetupCell(notebook, index, source, url, branch)


def write_setup_cell(notebook: Path, repo_url: str | None, branch: str = DEFAULT_BRANCH) -> bool:
    """Replace a notebook's setup cell with the canonical one (outputs cleared, atomically); True if it changed."""
    found, wanted = read_setup_cell(notebook), setup_cell_source(repo_url, branch)
    if found.source != wanted:
        nb = nbformat.read(notebook, as_version=4)
        nb.cells[found.index].update(source=wanted, outputs=[], execution_count=None)
        atomic_write(notebook, nbformat.writes(nb) + "\n")
    return found.source != wanted


def _write_readme(readme: Path, repo_url: str | None, branch: str) -> bool:
    text = readme.read_text(encoding="utf-8")
    updated = readme_with_repo(text, repo_url, branch)
    if updated != text:
        atomic_write(readme, updated)
    return updated != text


def notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:  # the course's notebooks, in order
    found = sorted(folder.glob("*.ipynb"))
    if not found:
        raise ToolingError(f"No notebooks in {folder}.")
    return found


def _cells(row: str) -> list[str]:  # a markdown table row and its cells
    return [c.strip() for c in row.strip().strip("|").split("|")]


def readme_with_repo(text: str, repo_url: str | None, branch: str = DEFAULT_BRANCH) -> str:
    """The README with the URL in its Colab section and a Colab badge per notebook (a "Colab" column)."""
    lines = text.split("\n")
    for missing in (TABLE_MARKER, REPO_MARKER):
        if missing not in lines:
            raise ToolingError(f"README.md lacks the line {missing}; restore it (the notebook table and the "
                               "Colab section are found by these markers).")
    start = lines.index(TABLE_MARKER) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header, rows = _cells(lines[start]), [_cells(r) for r in lines[start + 2 : end]]
    if header[-1] == "Colab":  # drop the old badges (a row may lack its badge cell)
        rows = [r[:-1] if len(r) == len(header) else r for r in rows]
        header = header[:-1]
    if repo_url:
        colab = "https://colab.research.google.com/github/" + normalize_repo_url(repo_url).removeprefix(
            "https://github.com/") + f"/blob/{branch}/notebooks/"
        for cells in rows:
            name = re.search(r"notebooks/([^/)]+)\.ipynb", cells[0])
            cells.append(f"[![Open in Colab]({COLAB_BADGE})]({colab}{name[1]}.ipynb)" if name else "")
        header = [*header, "Colab"]
    lines[start:end] = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                        *("| " + " | ".join(cells) + " |" for cells in rows)]

    at = lines.index(REPO_MARKER) + 1
    stop = next((i for i in range(at, len(lines)) if not lines[i].strip()), len(lines))
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
    setup_cell_source(repo_url, branch)  # the URL, the branch, every notebook and the README qualify before any write
    found = [read_setup_cell(nb).notebook for nb in notebooks(folder)]
    readme_with_repo(readme.read_text(encoding="utf-8"), repo_url, branch)
    changed = [nb for nb in found if write_setup_cell(nb, repo_url, branch)]
    return changed + [readme] * _write_readme(readme, repo_url, branch)


def normalize(folder: Path = NOTEBOOKS_DIR, readme: Path | None = README) -> list[Path]:
    """Rewrite every setup cell to the canonical one (keeping its URL and branch), and the README when the
    notebooks agree on one URL; the files that changed."""
    cells = [read_setup_cell(nb) for nb in notebooks(folder)]
    changed = [c.notebook for c in cells if write_setup_cell(c.notebook, c.repo_url, c.branch)]
    targets = {(c.repo_url, c.branch) for c in cells}
    if readme is not None and len(targets) == 1 and _write_readme(readme, *targets.pop()):
        changed.append(readme)
    return changed


def _readable_cells(folder: Path) -> tuple[list[SetupCell], list[str]]:
    """The setup cells that can be read, and the errors of those that cannot."""
    cells, errors = [], []
    for notebook in notebooks(folder):
        try:
            cells.append(read_setup_cell(notebook))
        except ToolingError as error:
            errors.append(str(error))
    return cells, errors


def problems(folder: Path = NOTEBOOKS_DIR, readme: Path | None = README) -> list[str]:
    """What is not canonical: setup cells, notebooks that disagree on URL or branch, a README that does not agree."""
    cells, found = _readable_cells(folder)
    found += [f"{c.notebook.name}: the setup cell (cell {c.index}) differs from the canonical one; run "
              "`python -m workshop_utils publish --normalize`." for c in cells if not c.canonical]
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


def unset_repo(folder: Path = NOTEBOOKS_DIR) -> str | None:
    """:data:`UNSET_REPO` while no readable setup cell holds a repository URL, else None (unreadable or
    disagreeing cells are :func:`problems`' to report)."""
    cells = _readable_cells(folder)[0]
    return UNSET_REPO if cells and not any(c.repo_url for c in cells) else None


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``publish`` subcommand of ``python -m workshop_utils``."""
    parser = commands.add_parser(
        "publish", help="set the course's public GitHub URL in every notebook and the README (Colab badges)",
        description="Writes the repository URL into every notebook's first (setup) cell, which clones it on "
        "Colab, and into the README, whose notebook table gets an 'Open in Colab' badge per notebook.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--repo", help="the public GitHub URL, e.g. https://github.com/OWNER/REPO")
    action.add_argument("--normalize", action="store_true",
                        help="rewrite every notebook's setup cell to the canonical one, keeping its URL")
    action.add_argument("--check", action="store_true",
                        help="list setup cells and README lines that are not canonical; exit 1 if any. Warns "
                        "(exit 0) while WORKSHOP_REPO, the course's URL, is not set")
    parser.add_argument("--strict", action="store_true",
                        help="with --check: an unset WORKSHOP_REPO is a problem too (exit 1), before a release")
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
        changed, what = normalize(args.notebooks, args.readme), "normalized the setup cell of"
    else:
        changed = publish(args.repo, args.branch, args.notebooks, args.readme)
        what = f"set {normalize_repo_url(args.repo)} (branch {args.branch}) in"
    print(f"publish: {what} {', '.join(p.name for p in changed) or 'nothing (already up to date)'}.")
    return 0
