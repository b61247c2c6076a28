"""The catalogue of `normbench list` (normbench/model/catalog.py): the kept copy describes
the classes as they are, a changed source makes it rebuilt from the classes, and neither
`normbench list` nor `normbench --help` imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from normbench.model import catalog

REGENERATE = "regenerate it: python -m normbench.model.catalog"


def test_the_kept_catalogue_describes_the_classes():
    assert catalog.kept() is not None, f"catalogue.json is out of date; {REGENERATE}"
    assert catalog.kept() == json.loads(json.dumps(catalog.build())), REGENERATE


def test_a_changed_source_is_rebuilt_from_the_classes(tmp_path):
    for name in catalog.SOURCES:
        shutil.copy(catalog.HERE / name, tmp_path / name)
    shutil.copy(catalog.KEPT, tmp_path / "catalogue.json")
    assert catalog.kept(tmp_path / "catalogue.json", tmp_path) is not None
    with open(tmp_path / "placements.py", "a") as f:
        f.write("\n# a new placement\n")
    assert catalog.kept(tmp_path / "catalogue.json", tmp_path) is None
    (tmp_path / "catalogue.json").write_text("{not json")
    assert catalog.kept(tmp_path / "catalogue.json", catalog.HERE) is None


def test_the_command_line_answers_without_torch():
    code = (
        "import sys\n"
        "from normbench.cli import main\n"
        "for argv in (['--help'], ['list'], ['list', '--markdown']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = sorted(m for m in ('torch', 'hydra', 'omegaconf', 'numpy') if m in sys.modules)\n"
        "print('imported:', heavy, file=sys.stderr)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| `pre` |" in done.stdout and "Placements (norm=<name>)" in done.stdout
