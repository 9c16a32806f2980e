"""The README's two set-up commands, run one after the other in one fresh venv.

The first (``pip install . && cnn apply ...``) used to leave Numba's cache in
``site-packages/cnn_cli/kernels/__pycache__/``; the second's uninstall left
that folder behind, and it shadowed the editable install as an empty namespace
package, so every later ``cnn`` failed with "cannot import name
'__version__'". This runs both commands as the README gives them, in a copy of
the checkout, then ``cnn --version`` from another folder. The sample itself
no longer loads Numba, so a convolution of the installed copy compiles the
kernels in between, as any larger run would.
"""

import os
import re
import shlex
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

import cnn_cli

ROOT = Path(__file__).resolve().parents[1]

COMPILE_KERNELS = ("import numpy as np; from cnn_cli import functional as F; "
                   "F.conv2d(np.ones((1, 1, 8, 8), np.float32), np.ones((2, 1, 3, 3), np.float32))")


def readme_setup_commands():
    """The two ``sh`` blocks under "Set-up: two commands", the test run cut off the second."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    install, tests = re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)[:2]
    assert "pytest" in tests, tests
    return install.strip(), tests.split("&& python -m pytest", 1)[0].strip()


def test_readme_names_the_two_commands():
    install, tests = readme_setup_commands()
    assert install.startswith("pip install . && cnn apply samples/")
    assert tests == "pip install -e '.[test]'"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to copy the checkout")
def test_the_two_setup_commands_in_one_venv_then_cnn_elsewhere(tmp_path):
    install, tests = readme_setup_commands()
    checkout = tmp_path / "cnn"
    # The tracked files only: a copy of the work tree as a fresh clone has it.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    env_dir = tmp_path / "v"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "NUMBA_CACHE"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(env_dir),
               PIP_DISABLE_PIP_VERSION_CHECK="1", CNN_CACHE_DIR=str(tmp_path / "cache"))

    def sh(command, cwd):
        done = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sh(install, checkout)
    # The sample is small enough to run in numpy without Numba (cnn_cli.functional.small); a
    # convolution of the installed copy with "auto" compiles its kernels, as any larger run would.
    sh(f"python -c {shlex.quote(COMPILE_KERNELS)}", elsewhere)
    sh(tests, checkout)
    assert sh("cnn --version", elsewhere).strip().endswith(cnn_cli.__version__)
    site = subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = sorted(str(p) for p in Path(site).rglob("*") if p.suffix in (".nbi", ".nbc"))
    assert not left, f"Numba cache files inside site-packages: {left[:5]}"
    assert list((tmp_path / "cache").rglob("*.nbi")), "the kernels were not cached in CNN_CACHE_DIR"
    # The editable install is the one that runs, from any folder.
    where = sh("python -c 'import cnn_cli; print(cnn_cli.__file__)'", elsewhere).strip()
    assert Path(where).resolve() == (checkout / "cnn_cli" / "__init__.py").resolve()
