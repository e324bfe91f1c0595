"""Ship the zoos and the example configuration inside the package (``lollms_server/data/``), so
a wheel install works like a source checkout; everything else is in pyproject.toml. (An editable
install reads them from the source tree: see ``lollms_server.utils.paths.shipped``.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("zoos", "config.toml.example")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "lollms_server" / "data"
        target.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            source = Path(name)
            if source.is_dir():
                shutil.copytree(
                    source,
                    target / name,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            else:
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithData})
