"""The extension's files: CMake lists every module file, module files import without Qt, self-tests run headless."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("RenalSeg", "RenalSegInteractive")


def cmake_entries(module: str) -> tuple[set[str], list[str]]:
    """Explicit file entries and GLOB patterns of a module's CMakeLists.txt (relative to the module folder)."""
    text = (ROOT / module / "CMakeLists.txt").read_text()
    text = re.sub(r"#.*", "", text).replace("${MODULE_NAME}", module)
    globs = {name: patterns.split() for name, patterns in re.findall(r"file\(GLOB (\w+) RELATIVE \S+ ([^)]*)\)", text)}
    entries, patterns = set(), []
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)\s+([^)]*)\)", text):
        for token in block.split():
            variable = re.fullmatch(r"\$\{(\w+)\}", token)
            if variable:
                patterns += globs[variable.group(1)]
            else:
                entries.add(token)
    return entries, patterns


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_python_file_and_resource(module):
    entries, patterns = cmake_entries(module)
    folder = ROOT / module
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt" and not p.name.startswith(".")}
    unlisted = {f for f in on_disk if f not in entries and not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)}
    assert not unlisted, f"add to {module}/CMakeLists.txt: {sorted(unlisted)}"
    assert not entries - on_disk, f"listed but missing: {sorted(entries - on_disk)}"
    assert f"{module}.py" in entries and f"Resources/Icons/{module}.png" in entries and f"Resources/UI/{module}.ui" in entries
    text = (folder / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_top_level_cmake_describes_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({field} "[^"]+"\)', text), field
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert "find_package(Slicer REQUIRED)" in text and "Slicer_EXTENSION_CPACK" in text
    assert all(f"add_subdirectory({module})" in text for module in MODULES)


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for module in MODULES:
        with Image.open(ROOT / module / "Resources" / "Icons" / f"{module}.png") as icon:
            assert icon.size == (128, 128)


@pytest.mark.parametrize("module", MODULES)
def test_widget_code_names_only_widgets_of_its_ui_file(module):
    """The Qt widget code cannot run here: at least every ``self.ui.NAME`` it uses must exist in its .ui file."""
    used = set(re.findall(r"self\.ui\.(\w+)", (ROOT / module / f"{module}.py").read_text()))
    defined = set(re.findall(r'<widget class="\w+" name="(\w+)"', (ROOT / module / "Resources" / "UI" / f"{module}.ui").read_text()))
    assert used and not used - defined, f"not in {module}.ui: {sorted(used - defined)}"


def test_module_files_import_in_plain_python_without_qt():
    code = ("import sys; sys.path[:0] = sys.argv[1:]\n"
            "import RenalSeg, RenalSegInteractive\n"
            "assert not RenalSeg.HAVE_GUI and not RenalSegInteractive.HAVE_GUI\n"
            "assert RenalSeg.RenalSegLogic and RenalSegInteractive.InteractiveLogic\n"
            "assert 'torch' not in sys.modules, 'torch must load lazily, on the worker thread'\n"
            "assert not {'monai', 'scipy', 'skimage'} & set(sys.modules), 'installed on first use: not imported at load'\n")
    run = subprocess.run([sys.executable, "-c", code, str(ROOT / "RenalSeg"), str(ROOT / "RenalSegInteractive")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def _headless(test_class):
    """A module's ScriptedLoadableModuleTest made runnable by unittest without Slicer's GUI."""
    return type(test_class.__name__, (test_class, unittest.TestCase), {"delayDisplay": lambda self, message: None,
                                                                      "runTest": lambda self: None})


def test_renalseg_self_test_runs_headless(scene):
    import RenalSeg

    test = _headless(RenalSeg.RenalSegTest)()
    test.setUp()
    test.test_segments_table_and_stl()
    test.setUp()
    test.test_real_engine()  # skips itself when no model file ships yet


def test_interactive_self_test_runs_headless(scene):
    import RenalSegInteractive

    test = _headless(RenalSegInteractive.RenalSegInteractiveTest)()
    test.setUp()
    test.test_click_and_undo()


def test_dependency_check_lists_what_is_missing(tmp_path):
    from importlib.metadata import PackageNotFoundError

    from RenalSegModuleLib import dependencies

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nmonai>=1.4\nslicerio>=1.1  # trailing comment\n\n")
    installed = {"torch": "2.5.0", "monai": "1.3.2"}

    def version(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    assert dependencies.missing_packages(requirements, version) == ["monai>=1.4", "slicerio>=1.1"]
    installed.update(monai="1.5.0", slicerio="1.2")
    assert dependencies.missing_packages(requirements, version) == []
    installed.pop("torch")
    assert dependencies.missing_packages(requirements, version) == ["torch>=2.2"]
    message = dependencies.install_message(["torch>=2.2"])
    assert "2.5 GB" in message and "weights ship with the extension" in message
    assert {r.name for r in dependencies.read_requirements()} >= {"monai", "scikit-image"}  # the shipped file parses
