"""Which Forge this is -- lllyasviel's, ersatzForge or Forge Neo -- and at which commit, from files on disk.

Nothing is imported and git is not run. The fork is told by model files only it has (docs/hosts-forks.md):
ersatzForge `backend/nn/cosmos_predict2.py`, Forge Neo `backend/nn/lumina.py` / `backend/nn/qwen.py`; a
`backend/nn/` holding model files none of the three has is "an unrecognised Forge fork". The commit is read
from the checkout's `.git` (HEAD -> `refs/heads/...` or `packed-refs`; a `.git` file's `gitdir:` is followed).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

FORKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ersatzForge", ("backend/nn/cosmos_predict2.py",)),
    ("Forge Neo", ("backend/nn/lumina.py", "backend/nn/qwen.py")),
)
# backend/nn/*.py of lllyasviel Forge dfdcbab6 (the stand-ins add none of their own names)
FORGE_FILES = frozenset({"__init__", "base", "clip", "chroma", "flux", "mmditx", "t5", "unet", "vae"})
_SHA = re.compile(r"^[0-9a-f]{40}$")


def fork(root: str | os.PathLike) -> str | None:
    """"ersatzForge" | "Forge Neo" | "Forge" for a WebUI root holding backend/, None for an unknown fork."""
    root = Path(root)
    for name, markers in FORKS:
        if any((root / marker).is_file() for marker in markers):
            return name
    models = {path.stem for path in (root / "backend" / "nn").glob("*.py")}
    return "Forge" if models <= FORGE_FILES else None


def _git_dir(root: Path) -> Path | None:
    git = root / ".git"
    if git.is_file():  # worktree / submodule: "gitdir: <path>"
        text = git.read_text(errors="replace").strip()
        if not text.startswith("gitdir:"):
            return None
        target = Path(text[len("gitdir:"):].strip())
        git = target if target.is_absolute() else root / target
    return git if git.is_dir() else None


def commit(root: str | os.PathLike) -> str | None:
    """The full commit hash HEAD points at, or None when there is no readable .git."""
    git = _git_dir(Path(root))
    if git is None:
        return None
    try:
        head = (git / "HEAD").read_text(errors="replace").strip()
        if _SHA.match(head):
            return head
        if not head.startswith("ref:"):
            return None
        ref = head[len("ref:"):].strip()
        common = git
        if (git / "commondir").is_file():  # a linked worktree keeps its refs in the main .git
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            loose = base / ref
            if loose.is_file():
                value = loose.read_text(errors="replace").strip()
                return value if _SHA.match(value) else None
        for base in (git, common):
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text(errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref and _SHA.match(parts[0]):
                        return parts[0]
    except OSError:
        return None
    return None


def describe(root: str | os.PathLike) -> str:
    """e.g. "ersatzForge fca12a28", "Forge Neo 1a2b3c4d", "Forge dfdcbab6", or what is unknown about it."""
    name = fork(root)
    if name is None:
        extra = sorted({p.stem for p in (Path(root) / "backend" / "nn").glob("*.py")} - FORGE_FILES)
        name = f"an unrecognised Forge fork (backend/nn/ has {', '.join(f'{n}.py' for n in extra[:6])})"
    sha = commit(root)
    return f"{name} {sha[:8]}" if sha else f"{name} (commit unknown: no .git)"
