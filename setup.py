"""The build step a wheel needs beyond pyproject.toml: ship training_configs/ and deepspeed_configs/ inside it.

Both folders stay at the repository's top level (one copy in git, where a checkout's users find them); building
a wheel copies their YAML and JSON files into the package as `forgekit/_shipped/<folder>/...`, where
`forgekit.shipped` finds them once installed. An editable install reads the top-level folders themselves.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("training_configs", "deepspeed_configs")  # forgekit.shipped.SHIPPED_FOLDERS
SUFFIXES = (".yaml", ".yml", ".json")


class BuildPyWithShippedConfigs(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # the checkout's own folders are read in place
            return
        for name in SHIPPED:
            folder = ROOT / name
            if not folder.is_dir():  # an sdist without them (see MANIFEST.in) would build a wheel that cannot run
                raise SystemExit(f"{folder} is missing: forgekit's wheel ships it")
            for src in sorted(folder.rglob("*")):
                if src.is_file() and src.suffix in SUFFIXES and ".ipynb_checkpoints" not in src.parts:
                    dest = Path(self.build_lib) / "forgekit" / "_shipped" / src.relative_to(ROOT)
                    self.mkpath(str(dest.parent))
                    self.copy_file(str(src), str(dest))


setup(cmdclass={"build_py": BuildPyWithShippedConfigs})
