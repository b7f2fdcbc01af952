"""Everything is in pyproject.toml; this only ships the repository's configs/ inside the wheel as
pfedlora/configs, the configs `pfedlora init` writes for users who installed the wheel (a source
checkout reads configs/ directly)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # `pip install -e`: pfedlora init reads configs/ in place
            return
        source = Path(__file__).resolve().parent / "configs"
        target = Path(self.build_lib) / "pfedlora" / "configs"
        for path in sorted(source.rglob("*.yaml")):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(path), str(destination))


setup(cmdclass={"build_py": BuildWithConfigs})
