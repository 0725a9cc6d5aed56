"""The install layout: one `candor` namespace, every package folder listed."""

import tomllib
from pathlib import Path

from fixtures.core import REPO_ROOT


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_installed():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = tool["package-dir"]
    folders_to_names = {Path(folder): name for name, folder in mapping.items()}
    missing = []
    for top, name in folders_to_names.items():
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / top)
            pkg = ".".join([name, *rel.parts]) if rel.parts else name
            if "__pycache__" not in init.parts and pkg not in listed:
                missing.append(pkg)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_only_the_candor_name_is_claimed():
    tool = _pyproject()["tool"]["setuptools"]
    assert all(p == "candor" or p.startswith("candor.") for p in tool["packages"])


def test_torch_is_pinned_to_the_cpu_wheel_on_disk():
    deps = _pyproject()["project"]["dependencies"]
    assert "torch==2.13.0" in deps


def test_the_chat_page_ships_as_package_data():
    from fnmatch import fnmatch

    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["candor.service"]
    web = REPO_ROOT / "service" / "web"
    files = sorted(p.relative_to(REPO_ROOT / "service").as_posix() for p in web.iterdir() if p.is_file())
    assert {"web/index.html", "web/app.css", "web/app.js"} <= set(files)
    unshipped = [f for f in files if not any(fnmatch(f, pat) for pat in patterns)]
    assert not unshipped, f"add to [tool.setuptools.package-data] candor.service: {unshipped}"
