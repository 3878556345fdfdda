"""Curated train/val/test splits of one market: leakage-free by drive and by place, ODD-stratified, stable.

- **Place**: every drive touches a set of geo cells (H3); drives that share a cell, directly or through other
  drives, form one *place group* and always land in the same split.
- **Stable**: drives already assigned in this split version keep their split; only new drives are placed. A new
  group that touches cells of two different splits cannot be placed without leaking, so it is held out of this
  version with the reason (a new split version re-shuffles everything).
- **Stratified**: new groups are placed greedily (largest first, ties by a hash of the version and drive ids)
  into the split that keeps every split's frame share near its ratio and its ODD tag shares near the market's.
- **Covered**: a group that is the last to carry an ODD value train does not have yet goes to train, so every
  value an evaluation split holds was trained on where the fleet allows it (unless the groups left could then
  not fill every evaluation split).
- **Deterministic**: the same candidates, previous assignment and config give the same assignment.

The checks are separate functions over an assignment, so a planted violation (an edited previous manifest) is
caught the same way as a bug would be.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ad_common.lake_layout import ODD_TAGS, ODD_UNKNOWN, SPLITS


@dataclass(frozen=True)
class DriveCandidate:
    drive_id: str
    frames: int
    cells: frozenset[str]
    # tag -> value -> frames with that value (frame-level tags of the drive)
    tag_frames: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class SplitConfig:
    version: str = "v1"
    ratios: Mapping[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    # A split's share of an ODD value may differ from the market's by this much, plus what whole place groups
    # allow: a split of two drives cannot hold 30 % night frames if no night drive is ~30 % of it.
    quota_tolerance: float = 0.15
    min_frames_per_split: int = 100
    size_weight: float = 4.0  # keeping split sizes at their ratios matters more than any one tag
    # An ODD value (>= this many frames) that only one new place group carries goes to train: a test split
    # cannot judge a model where it never trained (the only junction turn of a market, its only snow drive).
    coverage_min_frames: int = 20


@dataclass
class SplitAssignment:
    splits: dict[str, str]  # drive_id -> split
    held_out: dict[str, str]  # drive_id -> why it is not in this version
    groups: dict[str, int]  # drive_id -> place group number


@dataclass(frozen=True)
class Violation:
    check: str
    detail: str


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def place_groups(cells: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Drives connected by shared cells: group root -> sorted drive ids."""
    uf = _UnionFind()
    first_drive: dict[str, str] = {}
    for drive in sorted(cells):
        uf.find(drive)
        for cell in cells[drive]:
            if cell in first_drive:
                uf.union(drive, first_drive[cell])
            else:
                first_drive[cell] = drive
    groups: dict[str, list[str]] = defaultdict(list)
    for drive in sorted(cells):
        groups[uf.find(drive)].append(drive)
    return dict(groups)


def _stable_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def market_shares(candidates: Iterable[DriveCandidate]) -> dict[str, dict[str, float]]:
    """tag -> value -> share of the market's frames (unknown included: it is a value a split should mirror)."""
    totals: dict[str, dict[str, int]] = {tag: defaultdict(int) for tag in ODD_TAGS}
    for c in candidates:
        for tag in ODD_TAGS:
            for value, n in c.tag_frames.get(tag, {}).items():
                totals[tag][value] += n
    return {tag: {v: n / max(sum(vals.values()), 1) for v, n in sorted(vals.items())} for tag, vals in totals.items()}


class _Tally:
    """Frames per split and per (split, tag, value): what the greedy placement and the quota check read."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = defaultdict(int)
        self.tags: dict[tuple[str, str, str], int] = defaultdict(int)

    def add(self, split: str, drives: Iterable[DriveCandidate], sign: int = 1) -> None:
        for c in drives:
            self.frames[split] += sign * c.frames
            for tag in ODD_TAGS:
                for value, n in c.tag_frames.get(tag, {}).items():
                    self.tags[(split, tag, value)] += sign * n

    def cost(self, config: SplitConfig, shares: Mapping[str, Mapping[str, float]]) -> float:
        total = sum(self.frames.values()) or 1
        cost = sum(config.size_weight * (self.frames[s] / total - config.ratios[s]) ** 2 for s in SPLITS)
        for s in SPLITS:
            if not self.frames[s]:
                continue
            for tag, values in shares.items():
                for value, share in values.items():
                    cost += config.ratios[s] * (self.tags[(s, tag, value)] / self.frames[s] - share) ** 2
        return cost


def _values(drives: Iterable[DriveCandidate], min_frames: int) -> set[tuple[str, str]]:
    """The known (tag, value) pairs with at least ``min_frames`` frames in these drives together."""
    frames: Counter[tuple[str, str]] = Counter()
    for c in drives:
        for tag in ODD_TAGS:
            for value, n in c.tag_frames.get(tag, {}).items():
                if value != ODD_UNKNOWN:
                    frames[(tag, value)] += n
    return {v for v, n in frames.items() if n >= min_frames}


def assign_splits(
    candidates: Iterable[DriveCandidate], previous: Mapping[str, str], config: SplitConfig
) -> SplitAssignment:
    """Place every candidate drive; ``previous`` (drive -> split of this version) is kept as it is."""
    by_id = {c.drive_id: c for c in candidates}
    splits = {d: s for d, s in previous.items() if d in by_id}
    held_out: dict[str, str] = {}
    groups_all = place_groups({d: c.cells for d, c in by_id.items()})
    group_of = {d: i for i, members in enumerate(groups_all.values()) for d in members}

    # New drives only, grouped among themselves, each group anchored to the splits of old drives it touches.
    old_cells: dict[str, set[str]] = defaultdict(set)
    for d, s in splits.items():
        for cell in by_id[d].cells:
            old_cells[cell].add(s)
    new = {d: c.cells for d, c in by_id.items() if d not in splits}
    free: list[list[str]] = []
    for members in place_groups(new).values():
        touched = sorted({s for d in members for cell in by_id[d].cells for s in old_cells.get(cell, ())})
        if len(touched) == 1:
            splits.update({d: touched[0] for d in members})
        elif len(touched) > 1:
            for d in members:
                held_out[d] = (
                    f"its place group ({len(members)} drive(s)) shares geo cells with drives in "
                    f"{' and '.join(touched)}: placing it would leak; it joins a split in the next split version"
                )
        else:
            free.append(members)

    shares = market_shares(by_id.values())
    tally = _Tally()
    for d, s in splits.items():
        tally.add(s, [by_id[d]])
    free.sort(key=lambda m: (-sum(by_id[d].frames for d in m), _stable_hash(config.version, *m)))
    carried = [_values([by_id[d] for d in members], config.coverage_min_frames) for members in free]
    carriers_left = Counter(v for values in carried for v in values)
    for position, (members, values) in enumerate(zip(free, carried, strict=True)):
        drives = [by_id[d] for d in members]
        carriers_left.subtract(values)
        trained = {(tag, value) for (split, tag, value), n in tally.tags.items() if split == "train" and n > 0}
        # Coverage yields to the rule that no split stays empty: the groups after this one must still fill them.
        unfilled = sum(1 for s in SPLITS if s != "train" and not tally.frames[s])
        must_train = len(free) - position - 1 >= unfilled and any(
            not carriers_left[v] and v not in trained for v in values
        )
        best: tuple[float, str] | None = None
        # An empty split is filled first (evaluation splits before train): no split may stay empty while
        # groups are left, and a tag cost cannot see a split without frames.
        empty = [s for s in reversed(SPLITS) if not tally.frames[s]]
        for s in ["train"] if must_train else empty or SPLITS:
            tally.add(s, drives)
            cost = tally.cost(config, shares)
            tally.add(s, drives, -1)
            if best is None or cost < best[0]:
                best = (cost, s)
        assert best is not None
        tally.add(best[1], drives)
        splits.update({d: best[1] for d in members})
    return SplitAssignment(splits=splits, held_out=held_out, groups=group_of)


def leakage_violations(splits: Mapping[str, str], cells: Mapping[str, Iterable[str]]) -> list[Violation]:
    """Geo cells used by more than one split (a drive is one row of ``splits``, so it has one split)."""
    cell_splits: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for drive, split in splits.items():
        for cell in cells.get(drive, ()):
            cell_splits[cell][split].append(drive)
    out = []
    for cell, by_split in sorted(cell_splits.items()):
        if len(by_split) > 1:
            where = "; ".join(f"{s}: {', '.join(sorted(ds))}" for s, ds in sorted(by_split.items()))
            out.append(
                Violation("no_drive_or_place_leakage", f"geo cell {cell} is in {len(by_split)} splits ({where})")
            )
    return out


def frame_splits_violations(frame_drive_splits: Mapping[str, set[str]]) -> list[Violation]:
    """A drive whose frames are in more than one split (read from the frame manifest)."""
    return [
        Violation("no_drive_or_place_leakage", f"drive {d} has frames in {', '.join(sorted(s))}")
        for d, s in sorted(frame_drive_splits.items())
        if len(s) > 1
    ]


@dataclass(frozen=True)
class QuotaRow:
    split: str
    tag: str
    value: str
    split_share: float
    market_share: float
    allowed: float

    @property
    def deviation(self) -> float:
        return abs(self.split_share - self.market_share)


def quota_report(
    assignment: Mapping[str, str], candidates: Mapping[str, DriveCandidate], config: SplitConfig
) -> list[QuotaRow]:
    """Each split's share of every known ODD value against the market's, with the allowed deviation."""
    placed = [candidates[d] for d in assignment]
    shares = market_shares(placed)
    tally = _Tally()
    largest: dict[str, float] = defaultdict(float)
    groups = place_groups({c.drive_id: c.cells for c in placed})
    for members in groups.values():
        split = assignment[members[0]]
        drives = [candidates[d] for d in members]
        tally.add(split, drives)
        largest[split] = max(largest[split], sum(c.frames for c in drives))
    rows = []
    for s in SPLITS:
        if not tally.frames[s]:
            continue
        granularity = largest[s] / tally.frames[s]  # the share one place group moves
        for tag, values in shares.items():
            for value, share in values.items():
                if value == ODD_UNKNOWN:
                    continue
                split_share = tally.tags[(s, tag, value)] / tally.frames[s]
                rows.append(QuotaRow(s, tag, value, split_share, share, config.quota_tolerance + granularity))
    return rows


def quota_violations(rows: Iterable[QuotaRow]) -> list[Violation]:
    return [
        Violation(
            "odd_quotas",
            f"{r.split}: {r.tag}={r.value} is {100 * r.split_share:.0f} % of its frames against "
            f"{100 * r.market_share:.0f} % in the market ({100 * (r.deviation - r.allowed):.0f} points over "
            f"the allowed {100 * r.allowed:.0f})",
        )
        for r in rows
        if r.deviation > r.allowed + 1e-9
    ]


def min_frames_violations(frames_per_split: Mapping[str, int], config: SplitConfig) -> list[Violation]:
    return [
        Violation(
            "min_frames_per_split", f"{s} has {frames_per_split.get(s, 0)} frames (< {config.min_frames_per_split})"
        )
        for s in SPLITS
        if frames_per_split.get(s, 0) < config.min_frames_per_split
    ]
