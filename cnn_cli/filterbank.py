"""Filter banks: named kernels, how they are built, and the bank file format.

Building a kernel (``gaussian_kernel``, ``gabor_kernel``, ...) is kept separate
from applying it (``cnn_cli.pipeline``). A bank file is TOML::

    description = "First-derivative edge detectors"

    [[kernel]]
    name = "sobel_x"            # Sobel & Feldman (1968)
    values = [[-1, 0, 1],
              [-2, 0, 2],
              [-1, 0, 1]]

Each ``[[kernel]]`` has a ``name`` and exactly one way to give its numbers:

- ``values``: a 2-D list (kH, kW), or 3-D (C_in, kH, kW) for a filter over
  several channels (for example R, G, B);
- ``outer = [column, row]``: the separable kernel ``column ⊗ row``;
- ``gaussian = {sigma = 1.0}``, ``log = {sigma = 1.4}``,
  ``gabor = {frequency = 0.25, theta = 45, phase = "even"}`` or
  ``laws = "E5L5"``: built by the functions below (``size`` is optional).

Optional keys: ``scale`` multiplies the kernel, ``zero_mean = true`` removes
its mean (so flat regions give 0), ``bias`` adds a constant to the response.

Instead of ``[[kernel]]`` entries, a bank may point to weights in an npz file::

    [weights]
    file = "model_weights.npz"   # relative to the bank file
    key = "features.0.weight"    # array (C_out, C_in, kH, kW)
    names = ["f0", "f1"]         # optional

Banks are named by file (``edges`` is ``filters/edges.toml``), and
``NAME:PATTERN`` keeps the kernels whose names match a glob pattern, as in
``textures:gabor_*``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Reading, naming and the error type are shared with pipeline and architecture
# files; the names stay importable from here, where they began.
from .specfile import SpecFileError, builtin_dir, builtin_names, kind_of, read_spec, read_weights, resolve_file  # noqa: F401  (re-exported)

#: The error every bank problem raises (``SpecFileError``, under the name it had first).
BankError = SpecFileError

#: Largest kernel side and count a bank may declare; larger is surely a mistake.
MAX_KERNEL_SIDE = 255
MAX_KERNELS = 4096

#: What a kernel name may not hold: it names files, labels and manifest entries.
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Laws (1980), "Rapid texture identification", Proc. SPIE 238: the 1-D
# level, edge, spot, ripple and wave vectors whose outer products are the
# 5x5 texture-energy masks.
LAWS_VECTORS = {
    "L5": (1, 4, 6, 4, 1),
    "E5": (-1, -2, 0, 2, 1),
    "S5": (-1, 0, 2, 0, -1),
    "R5": (1, -4, 6, -4, 1),
    "W5": (-1, 2, 0, -2, 1),
}


# --------------------------------------------------------------------------- kernel builders


def _half_size(size, extent):
    """Half the side of a kernel: ``size // 2`` if given, else ceil(``extent``), the
    reach of its envelope; checked against MAX_KERNEL_SIDE before anything is built."""
    if size is None:
        if not extent * 2 + 1 <= MAX_KERNEL_SIDE:  # also false for inf and NaN
            raise SpecFileError(f"the kernel would be over the limit of {MAX_KERNEL_SIDE} pixels wide; "
                            "use a smaller sigma or size (or a higher frequency)")
        half = max(1, math.ceil(extent))
    elif size < 1 or size % 2 == 0:
        raise SpecFileError(f"size must be a positive odd number, but got {size}")
    else:
        half = size // 2
    if 2 * half + 1 > MAX_KERNEL_SIDE:
        raise SpecFileError(f"the kernel would be {2 * half + 1} pixels wide, over the limit of {MAX_KERNEL_SIDE}; "
                        "use a smaller sigma or size (or a higher frequency)")
    return half


def gaussian_kernel(sigma, *, size=None):
    """Normalised 2-D Gaussian, exp(-(x²+y²) / 2σ²) / sum; side 2*ceil(3σ)+1 by default.

    >>> gaussian_kernel(0.5, size=3).round(3)
    array([[0.011, 0.084, 0.011],
           [0.084, 0.619, 0.084],
           [0.011, 0.084, 0.011]])
    """
    half = _half_size(size, 3 * sigma)
    r = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def log_kernel(sigma, *, size=None):
    """Scale-normalised Laplacian of Gaussian, σ²∇²G (Marr & Hildreth, 1980), zero mean.

    Negative at the centre, so a bright blob of radius about σ√2 gives a strong
    negative response. The mean is removed so that flat regions give exactly 0
    despite the truncated tails. Side 2*ceil(4σ)+1 by default.
    """
    half = _half_size(size, 4 * sigma)
    r = np.arange(-half, half + 1, dtype=np.float64)
    y, x = np.meshgrid(r, r, indexing="ij")
    q = (x**2 + y**2) / (2 * sigma**2)
    k = (q - 1) / (np.pi * sigma**2) * np.exp(-q)
    return (k - k.mean()) * sigma**2


def gabor_kernel(frequency, theta=0.0, *, sigma_x=None, sigma_y=None, bandwidth=1.0, size=None):
    """Complex Gabor kernel, exactly as ``skimage.filters.gabor_kernel``.

    g(x, y) = exp(-(x'²/σx² + y'²/σy²)/2) / (2π σx σy) · exp(i 2π f x'),
    with x' = x cos θ + y sin θ and y' = -x sin θ + y cos θ (θ in radians).
    The real part is the even (cosine) filter, the imaginary part the odd
    (sine) one. σ defaults to the value that gives ``bandwidth`` octaves
    (Daugman, 1985; scikit-image's ``_sigma_prefactor``), and the half-size to
    3σ along the rotated axes, as in scikit-image.
    """
    b = bandwidth
    prefactor = 1.0 / np.pi * np.sqrt(np.log(2) / 2.0) * (2.0**b + 1) / (2.0**b - 1)
    sx = prefactor / frequency if sigma_x is None else sigma_x
    sy = prefactor / frequency if sigma_y is None else sigma_y
    ct, st = math.cos(theta), math.sin(theta)
    if size is None:
        x0 = _half_size(None, max(abs(3 * sx * ct), abs(3 * sy * st), 1))
        y0 = _half_size(None, max(abs(3 * sy * ct), abs(3 * sx * st), 1))
    else:
        x0 = y0 = _half_size(size, 1)
    y, x = np.meshgrid(np.arange(-y0, y0 + 1), np.arange(-x0, x0 + 1), indexing="ij")
    rotx = x * ct + y * st
    roty = -x * st + y * ct
    g = np.exp(-0.5 * (rotx**2 / sx**2 + roty**2 / sy**2)) / (2 * np.pi * sx * sy)
    return g * np.exp(1j * 2 * np.pi * frequency * rotx)


def laws_kernel(name):
    """Laws' 5x5 mask ``name`` such as "E5L5": outer(E5, L5), E5 down the rows, L5 along them."""
    a, b = name[:2].upper(), name[2:].upper()
    if len(name) != 4 or a not in LAWS_VECTORS or b not in LAWS_VECTORS:
        raise SpecFileError(
            f"laws must name two of {', '.join(LAWS_VECTORS)} such as 'E5L5', but got {name!r}"
        )
    return np.outer(LAWS_VECTORS[a], LAWS_VECTORS[b]).astype(np.float64)


# --------------------------------------------------------------------------- banks


@dataclass(frozen=True)
class Kernel:
    """One named filter: ``weights`` is (kH, kW), or (C_in, kH, kW) for a multichannel filter."""

    name: str
    weights: np.ndarray
    bias: float = 0.0

    @property
    def size(self):
        return self.weights.shape[-2:]

    @property
    def channels(self):
        """Input channels the filter was written for, or None for a 2-D kernel."""
        return self.weights.shape[0] if self.weights.ndim == 3 else None


@dataclass(frozen=True)
class Bank:
    name: str
    description: str
    kernels: tuple[Kernel, ...]
    source: str

    def select(self, pattern):
        """The kernels whose names match the glob ``pattern``."""
        kept = tuple(k for k in self.kernels if fnmatch.fnmatchcase(k.name, pattern))
        if not kept:
            names = ", ".join(k.name for k in self.kernels)
            raise SpecFileError(f"no kernel of bank '{self.name}' matches '{pattern}'; it has: {names}")
        return Bank(f"{self.name}:{pattern}", self.description, kept, self.source)


def load_bank(spec):
    """Load a bank by name, path, or ``NAME:PATTERN``."""
    name, _, pattern = str(spec).partition(":")
    if pattern and len(name) == 1:  # a Windows drive letter, not a selector
        name, pattern = str(spec), ""
    path, doc = read_spec(name, "bank")
    bank = parse_bank(doc, path)
    return bank.select(pattern) if pattern else bank


def parse_bank(doc, path):
    """Build a ``Bank`` from a parsed TOML document; errors name the file, kernel and field."""
    path = Path(path)
    where = str(path)
    if "weights" in doc:
        kernels = _kernels_from_npz(doc["weights"], path)
    else:
        entries = doc.get("kernel")
        if not isinstance(entries, list) or not entries:
            raise SpecFileError(f"{where}: a bank needs [[kernel]] entries or a [weights] table")
        kernels = [_parse_kernel(entry, i, where) for i, entry in enumerate(entries)]
    if len(kernels) > MAX_KERNELS:
        raise SpecFileError(f"{where}: {len(kernels)} kernels is more than the limit of {MAX_KERNELS}")
    names = [k.name for k in kernels]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecFileError(f"{where}: kernel names must be unique, but these repeat: {duplicates}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise SpecFileError(f"{where}: description must be a string")
    return Bank(path.stem, description, tuple(kernels), where)


_SOURCES = ("values", "outer", "gaussian", "log", "gabor", "laws")


def _parse_kernel(entry, index, where):
    if not isinstance(entry, dict):
        raise SpecFileError(f"{where}: kernel {index + 1} must be a table")
    name = entry.get("name")
    problem = _name_problem(name)
    if problem:
        raise SpecFileError(f"{where}: kernel {index + 1} needs a 'name' {problem}")
    label = f"{where}: kernel '{name}'"
    given = [key for key in _SOURCES if key in entry]
    if len(given) != 1:
        raise SpecFileError(f"{label}: give exactly one of {', '.join(_SOURCES)}, not {given or 'none'}")
    unknown = set(entry) - {"name", "scale", "zero_mean", "bias", *_SOURCES}
    if unknown:
        raise SpecFileError(f"{label}: unknown field(s) {sorted(unknown)}")
    try:
        with np.errstate(all="ignore"):  # degenerate numbers are caught by check_kernel_array
            weights = _build(given[0], entry[given[0]])
    except SpecFileError as exc:
        raise SpecFileError(f"{label}, field '{given[0]}': {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecFileError(f"{label}, field '{given[0]}': {exc}") from None
    zero_mean = entry.get("zero_mean", False)
    if not isinstance(zero_mean, bool):
        raise SpecFileError(f"{label}, field 'zero_mean': must be true or false, not {zero_mean!r}")
    if zero_mean:
        weights = weights - weights.mean(axis=(-2, -1), keepdims=True)
    scale = _number(entry.get("scale", 1.0), f"{label}, field 'scale'")
    bias = _number(entry.get("bias", 0.0), f"{label}, field 'bias'")
    with np.errstate(all="ignore"):
        weights = weights * scale
    return Kernel(name.strip(), check_kernel_array(weights, label), bias)


def _name_problem(name):
    """What is wrong with a kernel name, or None: it must be one line of text, without slashes."""
    if not isinstance(name, str) or not name.strip():
        return f"that is text, not {name!r}"[:120]
    if _BAD_NAME.search(name):
        return f"of one line without slashes or control characters, not {name!r}"[:160]
    return None


def _number(value, label):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecFileError(f"{label} must be a finite number, but got {value!r}")
    return float(value)


def _params(table, allowed):
    if not isinstance(table, dict):
        raise SpecFileError("must be a table such as {sigma = 1.0}")
    unknown = set(table) - set(allowed)
    if unknown:
        raise SpecFileError(f"unknown parameter(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    out = {}
    for key, value in table.items():
        if key == "phase":
            out[key] = value
            continue
        out[key] = _number(value, key)
        if key == "size":
            if isinstance(value, float) and not value.is_integer():
                raise SpecFileError(f"size must be a whole odd number, but got {value!r}")
            out[key] = int(value)
        elif key != "theta" and out[key] <= 0:
            raise SpecFileError(f"{key} must be positive, but got {value!r}")
        elif key == "bandwidth" and out[key] > 8:
            raise SpecFileError(f"bandwidth is in octaves and must be at most 8, but got {value!r}")
    return out


def _build(kind, spec):
    """Kernel array for one source field of a ``[[kernel]]`` entry."""
    if kind == "values":
        arr = np.asarray(spec, dtype=np.float64)
        if arr.ndim not in (2, 3):
            raise SpecFileError(f"must be a 2-D (kH, kW) or 3-D (C_in, kH, kW) list, not {arr.ndim}-D")
        return arr
    if kind == "outer":
        if not (isinstance(spec, list) and len(spec) == 2):
            raise SpecFileError("must be [column, row], two lists of numbers")
        col, row = (np.asarray(v, dtype=np.float64) for v in spec)
        if col.ndim != 1 or row.ndim != 1:
            raise SpecFileError("must be [column, row], two lists of numbers")
        return np.outer(col, row)
    if kind == "laws":
        if not isinstance(spec, str):
            raise SpecFileError("must be a string such as 'E5L5'")
        return laws_kernel(spec)
    if kind in ("gaussian", "log"):
        p = _params(spec, ("sigma", "size"))
        if "sigma" not in p:
            raise SpecFileError("needs a sigma (the Gaussian's standard deviation in pixels)")
        build = gaussian_kernel if kind == "gaussian" else log_kernel
        return build(p["sigma"], size=p.get("size"))
    p = _params(spec, ("frequency", "theta", "sigma_x", "sigma_y", "bandwidth", "size", "phase"))
    phase = p.pop("phase", "even")
    if phase not in ("even", "odd"):
        raise SpecFileError(f"phase must be 'even' or 'odd', but got {phase!r}")
    if "frequency" not in p:
        raise SpecFileError("needs a frequency (cycles per pixel)")
    theta = math.radians(p.pop("theta", 0.0))
    g = gabor_kernel(p.pop("frequency"), theta, **p)
    return g.real if phase == "even" else g.imag


def check_kernel_array(arr, label):
    """Reject kernels that cannot be right: non-finite, empty, or absurdly large."""
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise SpecFileError(f"{label}: kernel must be a non-empty (kH, kW) or (C_in, kH, kW) array, not {arr.shape}")
    if max(arr.shape[-2:]) > MAX_KERNEL_SIDE:
        raise SpecFileError(f"{label}: kernel side {max(arr.shape[-2:])} is over the limit of {MAX_KERNEL_SIDE}")
    if not np.all(np.isfinite(arr)):
        raise SpecFileError(f"{label}: kernel values must be finite numbers (found NaN or inf)")
    return arr


def _kernels_from_npz(table, path):
    where = str(path)
    arr = read_weights(table, path).astype(np.float64)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise SpecFileError(f"{where}: [weights] key must hold (C_out, C_in, kH, kW) weights, not {arr.shape}")
    names = table.get("names") or [f"{table['key']}[{i}]" for i in range(arr.shape[0])]
    if not isinstance(names, list) or len(names) != arr.shape[0]:
        count = len(names) if isinstance(names, list) else "no list of"
        raise SpecFileError(f"{where}: [weights] names has {count} entries for {arr.shape[0]} filters")
    for i, name in enumerate(table.get("names") or []):  # the default names come from the file's key
        problem = _name_problem(str(name))
        if problem:
            raise SpecFileError(f"{where}: [weights] names[{i}] must be a name {problem}")
    kernels = []
    for name, w in zip(names, arr):
        label = f"{where}: kernel '{name}'"
        kernels.append(Kernel(str(name), check_kernel_array(w[0] if w.shape[0] == 1 else w, label)))
    return kernels
