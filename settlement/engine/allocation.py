"""Exact, deterministic largest-remainder allocation of integer totals over ppm shares.

Each part first gets the floor of its exact share; the units left over (fewer than the number
of parts) go one each to the parts with the largest remainders, ties to the smaller recipient
id. A negative total is allocated as its absolute value and negated, so a reversal takes back
exactly what the same total would have paid. Products use Int128: a fee sum times a ppm share
passes int64 long before a real epoch does.
"""

import operator
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import overload

import polars as pl

from schemas.errors import InvariantViolation
from settlement.engine.constants import ppm_total

_i128 = pl.Int128


def allocate(parts: pl.DataFrame, key: str = "allocation_id") -> pl.DataFrame:
    """Allocate `total_micros` of each `key` over its rows' `share_ppm`; add `amount_micros` (Int128).

    `parts` has one row per (key, recipient) with `total_micros` repeated on every row of the key,
    and shares of a key summing to `ppm_total`. Rows come back sorted by (key, recipient).
    """
    if parts.is_empty():
        return parts.with_columns(amount_micros=pl.lit(0, _i128)).clear()
    total = pl.col("total_micros").cast(_i128)
    product = total.abs() * pl.col("share_ppm").cast(_i128)
    ranked = (
        parts.with_columns(
            _floor=product // pl.lit(ppm_total, _i128),
            _remainder=product % pl.lit(ppm_total, _i128),
        )
        .sort([key, "_remainder", "recipient"], descending=[False, True, False])
        .with_columns(
            _rank=pl.int_range(pl.len(), dtype=pl.Int64).over(key),
            _left=total.abs() - pl.col("_floor").sum().over(key),
        )
    )
    allocated = ranked.with_columns(
        amount_micros=(pl.col("_floor") + (pl.col("_rank") < pl.col("_left")).cast(_i128)) * total.sign().cast(_i128)
    ).drop("_floor", "_remainder", "_rank", "_left")
    check = allocated.group_by(key).agg(
        pl.col("share_ppm").sum().alias("ppm"),
        (pl.col("amount_micros").sum() - pl.col("total_micros").first().cast(_i128)).alias("lost"),
    )
    if not check["ppm"].eq(ppm_total).all():
        raise InvariantViolation(f"shares do not sum to {ppm_total}: {check.filter(pl.col('ppm') != ppm_total)}")
    if not check["lost"].eq(0).all():
        raise InvariantViolation(f"an allocation's parts do not sum to its total: {check.filter(pl.col('lost') != 0)}")
    return allocated.sort([key, "recipient"])


def allocate_by_weight(total: int, weights: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Allocate the integer `total` over positive integer `weights` (recipient, weight) by the same rule as
    `allocate`, with weights in place of ppm shares: each part the floor of `total * weight / sum`, the units
    left over one each to the largest remainders, ties to the smaller recipient. A negative total is allocated
    as its absolute value and negated. Python integers: a time-weighted token balance is far past Int128 when
    multiplied by a total. Returns (recipient, amount) sorted by recipient, zero amounts included.
    """
    recipients, amounts = allocate_by_weight_columns(total, weights)
    return list(zip(recipients, amounts, strict=True))


class WeightColumns(Sequence[tuple[str, int]]):
    """(recipient, weight) pairs held as two columns: a sequence of pairs to whoever iterates it, read as the columns
    themselves by `allocate_by_weight_columns` (a million holders' tuples, made then taken apart, cost ~0.3 s).

    `of_frame` holds them as a polars frame (recipient String, weight Int128) instead: `allocate_by_weight_frame`
    allocates it in Int128 where that is exact, and the Python lists (~0.2 s at a million holders) are made only if
    something asks for them."""

    __slots__ = ("_frame", "_recipients", "_weights")

    def __init__(self, recipients: list[str], weights: list[int]) -> None:
        if len(recipients) != len(weights):
            raise InvariantViolation(f"{len(recipients)} recipients but {len(weights)} weights")
        self._recipients: list[str] | None = recipients
        self._weights: list[int] | None = weights
        self._frame: pl.DataFrame | None = None

    @classmethod
    def of_frame(cls, frame: pl.DataFrame) -> "WeightColumns":
        """The pairs of a frame's `recipient` (String) and `weight` (integer) columns, kept as the frame."""
        self = cls.__new__(cls)
        self._recipients = self._weights = None
        self._frame = frame.select(pl.col("recipient").cast(pl.String), pl.col("weight").cast(_i128))
        return self

    @property
    def recipients(self) -> list[str]:
        if self._recipients is None:
            self._recipients = self._frame["recipient"].to_list()  # type: ignore[index]
        return self._recipients

    @property
    def weights(self) -> list[int]:
        if self._weights is None:
            self._weights = self._frame["weight"].to_list()  # type: ignore[index]
        return self._weights

    @property
    def frame(self) -> pl.DataFrame | None:
        """The frame the pairs were given as (`of_frame`), or None."""
        return self._frame

    def __len__(self) -> int:
        return self._frame.height if self._frame is not None else len(self.recipients)

    @overload
    def __getitem__(self, index: int) -> tuple[str, int]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, int]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, int] | list[tuple[str, int]]:
        if isinstance(index, slice):
            return list(zip(self.recipients[index], self.weights[index], strict=True))
        return self.recipients[index], self.weights[index]

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return zip(self.recipients, self.weights, strict=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


_int128_bound = 2**127


def allocate_by_weight_frame(total: int, weights: Sequence[tuple[str, int]]) -> pl.DataFrame:
    """`allocate_by_weight` as a frame (recipient String, amount_micros Int128), sorted by recipient, zero amounts
    included. Weights given `WeightColumns.of_frame`, positive, in strictly ascending recipient order, and small
    enough that every product `|total| * weight` and their sum stay below 2**127 are allocated in polars' Int128,
    exactly (no product can wrap); any others by `allocate_by_weight_columns` in Python integers (~0.9 s at a million
    holders, against ~0.1 s), which also names what is wrong with weights it refuses."""
    frame = weights.frame if isinstance(weights, WeightColumns) else None
    if frame is not None and frame.height:
        allocated = _allocated_in_int128(total, frame)
        if allocated is not None:
            return allocated
    recipients, amounts = allocate_by_weight_columns(total, weights)
    return pl.DataFrame(
        {"recipient": pl.Series(recipients, dtype=pl.String), "amount_micros": pl.Series(amounts, dtype=_i128)}
    )


def _allocated_in_int128(total: int, frame: pl.DataFrame) -> pl.DataFrame | None:
    """The allocation of `total` over `frame`'s weights in Int128, or None where that is not exact or the weights
    are not positive and strictly ascending by recipient (the Python integers' path takes those)."""
    size = abs(total)
    bounds = frame.select(
        smallest=pl.col("weight").min(),
        largest=pl.col("weight").max(),
        ascending=pl.col("recipient").shift(1).lt(pl.col("recipient")).fill_null(True).all(),
        complete=pl.col("recipient").null_count() == 0,
    ).row(0, named=True)
    largest = int(bounds["largest"])
    if int(bounds["smallest"]) <= 0 or not (bounds["ascending"] and bounds["complete"]):
        return None
    if size * largest >= _int128_bound or frame.height * largest >= _int128_bound:
        return None
    whole = int(frame["weight"].sum())  # below frame.height * largest: no wrap
    product = pl.col("weight") * pl.lit(size, _i128)
    parts = frame.select(
        "recipient",
        floor=product // pl.lit(whole, _i128),
        remainder=product % pl.lit(whole, _i128),
    )
    left = size - int(parts["floor"].sum())  # the floors sum to at most `size`
    sign = 1 if total >= 0 else -1
    allocated = parts.select(
        "recipient", amount_micros=(pl.col("floor") + _bumped(parts, left).cast(_i128)) * pl.lit(sign, _i128)
    )
    if int(allocated["amount_micros"].sum()) != total:
        raise InvariantViolation(f"an allocation by weight does not sum to its total {total}")
    return allocated


def _bumped(parts: pl.DataFrame, left: int) -> pl.Expr:
    """Whether each row of `parts` (in recipient order) is one of the `left` largest remainders, ties to the smaller
    recipient: every remainder above the `left`-th largest, then the first rows equal to it. A selection, not a sort
    of the frame by (remainder, index): at a million holders 0.01 s against 0.1-0.15 s."""
    if left == 0:
        return pl.lit(False)
    threshold = parts["remainder"].top_k(left).min()
    above = int((parts["remainder"] > threshold).sum())
    at = pl.col("remainder") == pl.lit(threshold, _i128)
    return (pl.col("remainder") > pl.lit(threshold, _i128)) | (at & (at.cum_sum() <= left - above))


def allocate_by_weight_columns(total: int, weights: Sequence[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """`allocate_by_weight` as two columns: the recipients, sorted, and their amounts (no tuple per recipient: a
    million holders' tuples cost a second). `weights` as `WeightColumns` are read as they are."""
    if isinstance(weights, WeightColumns):
        recipients, amounts = weights.recipients, weights.weights
    else:
        recipients = [recipient for recipient, _ in weights]
        amounts = [weight for _, weight in weights]
    if amounts and min(amounts) <= 0:
        raise InvariantViolation("allocation weights must be positive")
    if not weights:
        if total:
            raise InvariantViolation(f"{total} to allocate over no weight")
        return [], []
    if not _sorted_by_recipient(recipients):
        ordered = sorted(zip(recipients, amounts, strict=True))
        recipients, amounts = [recipient for recipient, _ in ordered], [weight for _, weight in ordered]
    whole = sum(amounts)
    size = abs(total)
    products = [size * weight for weight in amounts]
    floors = [product // whole for product in products]
    remainders = [product % whole for product in products]
    for index in largest_remainders(remainders, whole, size - sum(floors)):
        floors[index] += 1
    if sum(floors) != size:
        raise InvariantViolation(f"an allocation by weight does not sum to its total {total}")
    return recipients, floors if total >= 0 else [-floor for floor in floors]


def largest_remainders(remainders: list[int], whole: int, left: int) -> list[int]:
    """The indexes of the `left` largest `remainders` (each in [0, whole)), ties to the smaller index; ascending.

    Sorting a million remainders as Python integers took ~0.6 s. Each remainder's top 62 bits (`r >> shift`) order
    them as the remainders do wherever those bits differ (r ≥ key·2^shift > r' when key > key'), so one Int64 sort in
    polars finds the last key taken; only the remainders sharing that key are compared exactly, stably (equal
    remainders keep index order), as the whole list was before."""
    if left <= 0:
        return []
    shift = max(0, whole.bit_length() - 62)
    keys = pl.DataFrame(
        {
            "key": pl.Series([r >> shift for r in remainders], dtype=pl.Int64),
            "index": pl.int_range(len(remainders), eager=True),
        }
    ).sort(["key", "index"], descending=[True, False])
    taken = keys.head(left)
    threshold = taken["key"][-1]
    sure = taken.filter(pl.col("key") > threshold)["index"].to_list()
    tied = keys.filter(pl.col("key") == threshold)["index"].to_list()  # in index order
    return sorted(sure + sorted(tied, key=remainders.__getitem__, reverse=True)[: left - len(sure)])


def _sorted_by_recipient(recipients: list[str]) -> bool:
    """Whether `recipients` are in strictly ascending order (what `holder_weights` returns)."""
    return all(map(operator.lt, recipients, islice(recipients, 1, None)))
