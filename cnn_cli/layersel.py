"""``--layer`` and ``--layers``: one grammar for naming layers, in every command.

A selection is a comma-separated list of parts; each part is

- an index, ``3``, or a negative one counting from the end, ``-1``;
- ``last``, the last layer;
- a layer's name: ``layer<i>`` (the npz key and manifest name of layer i),
  or the name a graph network gives its node;
- a kind, ``maxpool``: every layer of that kind (for ``--layer``, which
  takes one layer, the kind must occur once);
- a range, both ends included: ``2-4``, ``2:4``, ``2:`` (to the last
  layer), ``:2`` (from the first), ``-3:`` (the last three). The ends of a
  ``:`` range may be names or ``last`` too.

The caller gives the layers as ``LayerRecord``s (index, name, kind), so this
module knows nothing of layer classes: a pipeline, a sequential network and
a graph of named nodes are all a list of records. Every refusal is an
``OptionError`` (a usage error, exit 2) that says which layers exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Layers listed in an error message; a longer network is shortened with "and N more".
LISTED = 40

HOW = "give an index (negative counts from the end), a name, a kind, 'last', or a range such as 2-4 or 2:"


class OptionError(ValueError):
    """An option's value does not fit what it applies to: a usage error, which the CLI ends with exit 2."""


@dataclass(frozen=True)
class LayerRecord:
    """What a selection can name of one layer: its index, its name and its kind."""

    index: int
    name: str
    kind: str

    def describe(self):
        default = self.name == f"layer{self.index}"
        return f"{self.index} ({self.kind})" if default else f"{self.index} {self.name} ({self.kind})"


def sequential(kinds):
    """Records of a chain of layers of ``kinds``, named ``layer<i>``."""
    return [LayerRecord(i, f"layer{i}", kind) for i, kind in enumerate(kinds)]


def of(layers, names=None):
    """Records of ``layers`` (a pipeline's or network's), named by their node ``names`` where a
    graph gives them (``layer<i>`` names them too), else ``layer<i>``."""
    names = names or [str(i) for i in range(len(layers))]
    return [LayerRecord(i, f"layer{i}" if name == str(i) else name, layer.kind)
            for i, (layer, name) in enumerate(zip(layers, names))]


def listing(records, subset=False):
    """'there are layers 0 to N: 0 (conv), 1 (abs), ...' (shortened past ``LISTED``); with
    ``subset``, the records are those of the layers that may be chosen."""
    if not records:
        return "there is no layer to choose from"
    shown = ", ".join(r.describe() for r in records[:LISTED])
    more = f" and {len(records) - LISTED} more" if len(records) > LISTED else ""
    if subset:
        return f"the layers that can be chosen are {shown}{more}"
    return f"there are layers {records[0].index} to {records[-1].index}: {shown}{more}"


def select(records, text, *, option="--layers", refuse=None):
    """The sorted indices a comma-separated selection names (see the module docstring).

    ``refuse(record)`` may return why a layer cannot be chosen here (e.g. "gives
    a vector, not maps"); the error then lists only the layers that can.
    """
    records = list(records)
    chosen = set()
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise OptionError(f"{option}: give a layer; {HOW}; {_listing(records, refuse)}")
    for part in parts:
        for position in _positions(records, part, option, refuse):
            _check_allowed(records[position], part, option, records, refuse)
            chosen.add(records[position].index)
    return tuple(sorted(chosen))


def select_one(records, text, *, option="--layer", refuse=None):
    """The one index that ``text`` names: as ``select``, but a kind must occur once, and no list or range."""
    records = list(records)
    part = str(text).strip()
    positions = _positions(records, part, option, refuse, single=True)
    if len(positions) != 1:
        raise OptionError(f"{option} {part}: names {len(positions)} layers, but one is needed; "
                          f"{_listing(records, refuse)}")
    _check_allowed(records[positions[0]], part, option, records, refuse)
    return records[positions[0]].index


def _listing(records, refuse):
    """The layers that may be chosen, for an error message."""
    if refuse is None:
        return listing(records)
    return listing([r for r in records if not refuse(r)], subset=True)


def _check_allowed(record, part, option, records, refuse):
    why = refuse(record) if refuse is not None else None
    if why:
        raise OptionError(f"{option} {part}: layer {record.index} ({record.kind}) {why}; "
                          f"{_listing(records, refuse)}")


_RANGE_DASH = re.compile(r"^(\d+)-(\d+)$")


def _positions(records, part, option, refuse, single=False):
    """Positions in ``records`` that one part names."""
    one = _one(records, part)
    if one is not None:
        return [one]
    if not single:
        kinds = [i for i, r in enumerate(records) if r.kind == part]
        if kinds:
            return kinds
        dash = _RANGE_DASH.match(part)
        ends = (dash.group(1), dash.group(2)) if dash else part.split(":") if part.count(":") == 1 else None
        if ends is not None:
            first = _one(records, ends[0]) if ends[0] else 0
            last = _one(records, ends[1]) if ends[1] else len(records) - 1
            if first is not None and last is not None and first <= last:
                return list(range(first, last + 1))
            if first is not None and last is not None:
                raise OptionError(f"{option} {part}: the range is empty (its first layer comes after its last); "
                                  f"{listing(records)}")
    else:
        kinds = [i for i, r in enumerate(records) if r.kind == part]
        if len(kinds) > 1:
            raise OptionError(f"{option} {part}: {len(kinds)} layers are {part} "
                              f"({', '.join(str(records[i].index) for i in kinds)}); give one index; "
                              f"{_listing(records, refuse)}")
        if kinds:
            return kinds
    raise OptionError(f"{option} {part}: no such layer; {HOW}; {listing(records)}")


def _one(records, part):
    """The position of the one layer an index, 'last', 'layer<i>' or a name gives; None if it gives none."""
    if not records:
        return None
    if part == "last":
        return len(records) - 1
    number = part[len("layer"):] if part.startswith("layer") and part[len("layer"):].isdigit() else part
    if re.fullmatch(r"-?\d+", number):
        value = int(number)
        if value < 0 and not number.startswith("-0") and -value <= len(records):
            return len(records) + value
        for position, record in enumerate(records):
            if record.index == value:
                return position
        return None
    for position, record in enumerate(records):
        if record.name == part:
            return position
    return None
