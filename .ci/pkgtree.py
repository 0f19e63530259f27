"""Lay out the installed package tree (`cronloop`, `cronloop.standard`, ...) as symlinks.

pyproject.toml maps the product's folders (worker/, tasks/, migrations/) onto one import
name with `package-dir`; at run time an editable install resolves that with an import hook.
mypy and import-linter read packages from folders and know no import hooks, so they are
pointed at this tree instead: `.build/pkgtree/cronloop/...`, each file a link to its source.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """The folder a package's files are in: its own mapping, else its parent's + name."""
    if package in package_dir:
        return ROOT / package_dir[package]
    parent, _, name = package.rpartition(".")
    return source_dir(parent, package_dir) / name


def main() -> int:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    target = ROOT / ".build" / "pkgtree"
    shutil.rmtree(target, ignore_errors=True)
    for package in setup["packages"]:
        src = source_dir(package, setup.get("package-dir", {}))
        dst = target.joinpath(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for path in sorted(src.iterdir()):
            if path.is_file() and (path.suffix in (".py", ".pyi") or path.name == "py.typed"):
                (dst / path.name).symlink_to(path)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
