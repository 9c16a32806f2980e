"""The one place that says how kernels are compiled.

Every kernel is a serial loop over a range of independent tasks
``[first, last)`` (an output row tile, an image plane, a filter), compiled with
``nogil=True``. ``cnn_cli.functional.threads`` runs a call on the calling
thread when it is small, or splits the task range between a few Python
threads, which run the compiled loop at once because it releases the GIL. No
two tasks write the same memory.

Why threads and not ``prange``: a ``parallel=True`` kernel takes several
times longer to compile, the first one costs a start-up in every process
longer than a whole ``cnn apply`` of a photo, and Numba's and BLAS's worker
pools spin and fight over a small machine's cores. One pool of sleeping
threads serves the kernels and the matrix products alike.
"""

import os
import platform
import sys

import llvmlite.binding as llvm
from numba import njit
from numba.core import config as numba_config


def user_cache_dir():
    """Where ``cnn`` keeps files it made for itself: ``$CNN_CACHE_DIR``, else the platform's user cache."""
    if os.environ.get("CNN_CACHE_DIR"):
        return os.environ["CNN_CACHE_DIR"]
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "cnn")


def _keep_numba_cache_out_of_the_package():
    """Point Numba's disk cache at the user cache folder, unless ``NUMBA_CACHE_DIR`` is set.

    By default Numba writes its cache beside the source, in
    ``site-packages/cnn_cli/kernels/__pycache__/``. pip does not know those
    files, so an uninstall leaves the folder behind, and it then loads as an
    empty namespace package that shadows a later editable install (``cannot
    import name '__version__'``). The cache is keyed by the source file's
    full path, so an installed and an editable copy never share entries.
    When the folder cannot be made, Numba keeps its own choice.
    """
    if numba_config.CACHE_DIR:
        return
    path = os.path.join(user_cache_dir(), "numba")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return
    # The environment too: Dask's worker processes and a config reload read it.
    os.environ["NUMBA_CACHE_DIR"] = numba_config.CACHE_DIR = path


_keep_numba_cache_out_of_the_package()


def _register_numpy_support_without_scipy_blas():
    """Import Numba's numpy support with SciPy's BLAS hidden from it.

    At import, ``numba.np.arraymath`` checks for BLAS (for ``np.dot`` in
    compiled code) by importing ``scipy.linalg.cython_blas``, which imports
    all of ``scipy.linalg``: a noticeable share of every ``cnn`` run that
    computes, and of a cached ``cnn apply`` above all. No kernel here calls
    BLAS from compiled code, so we let that check fail, then put the module
    table back. For the rest of the process, Numba-compiled
    ``np.convolve``/``np.correlate`` use a plain loop instead of BLAS;
    ``np.dot`` is unaffected.
    """
    name = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or name in sys.modules:
        return
    sys.modules[name] = None  # makes "import scipy.linalg.cython_blas" raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        del sys.modules[name]



_register_numpy_support_without_scipy_blas()

# On x86, LLVM turns some conditional moves back into branches, betting they
# are predictable. In max pooling on real data they are not: the branch
# mispredicts about half the time and made a LeNet max-pool several times
# slower. This only steers instruction choice, never results, and x86-64 has
# always had cmov. It applies to what is compiled from here on, so it is set before any
# kernel is defined.
if platform.machine().lower() in ("x86_64", "amd64"):
    llvm.set_option("", "-x86-cmov-converter=false")
    llvm.set_option("", "-disable-cgp-select2branch")

# Reassociation lets LLVM vectorise the sums; we leave out the "no NaN / no inf"
# assumptions so NaN and inf propagate through the engine as they do in torch.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: A kernel whose arithmetic may be reassociated. The disk cache
#: (``cache=True``) is keyed by the CPU name and features, so it never serves
#: code built for another CPU.
kernel = njit(cache=True, nogil=True, fastmath=FASTMATH)

#: A kernel whose comparisons must see NaN exactly (max pooling).
kernel_exact = njit(cache=True, nogil=True)

#: A small helper of other kernels, inlined into them (a call per output row
#: would cost more than the row's work on small maps).
helper = njit(cache=True, nogil=True, inline="always")
