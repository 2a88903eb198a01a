"""The settlement report: one self-contained HTML page a finance reviewer signs off before the root is proposed.

Everything is read from the ledger (read-only, analyst views defined) and drawn as inline SVG, so the page
needs no network, no script and no other file to be viewed or archived. Money is formatted from integer
micros with integer arithmetic; chart lengths are integer pixel fractions of the largest value.
"""

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from ledger import recorder
from ledger.attach import closing_snapshot
from ledger.ledger import Ledger
from ledger.query import define_views
from schemas.errors import require
from schemas.reason_codes import reason_code_of
from settlement.engine.accounts import contributor_prefix, holder_dust_prefix, holders_prefix, model_prefix, sql_literal
from settlement.engine.figures import report_figures
from settlement.ledger_io import data_files

_model = sql_literal(model_prefix)
_holders, _dust = sql_literal(contributor_prefix + holders_prefix), sql_literal(holder_dust_prefix)
micros_per_unit = 1_000_000
# Bounds on what one page shows, so a ledger with thousands of models or payees still gives a readable page.
chart_models_max = 8
chart_payees_max = 15
chart_flows_max = 15
table_rows_max = 20
palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
require(len(palette) >= chart_models_max + 1, "a colour for each charted model and the rest")


holder_token_schema = {
    "token": pl.String,
    "take_micros": pl.Int64,
    "holders_paid": pl.Int64,
    "paid_micros": pl.Int64,
    "dust_change_micros": pl.Int64,
    "dust_carried_micros": pl.Int64,
    "dust_holders": pl.Int64,
    "waiting_micros": pl.Int64,
}


@dataclass
class ReportData:
    """Every figure the page shows for one epoch. Money in micros."""

    epoch: dict
    previous: dict | None
    asset: str
    fees_by_day_model: pl.DataFrame  # event_date, model_id, fee_micros
    top_payees: pl.DataFrame  # recipient, payout_address, amount_micros, cumulative_micros
    payee_changes: pl.DataFrame  # recipient, amount_micros, previous_micros, change_micros
    lineage_flows: pl.DataFrame  # derived_model, parent_model, flowed_micros
    suspense_held: pl.DataFrame  # model_id, events, held_micros, oldest_event_time
    dead_letters: pl.DataFrame  # reason_code, messages, example (the commonest reason text of the code)
    reconciliation: pl.DataFrame  # check_name, items_checked, items_off, difference_micros
    recipients: int
    postings: int
    payable_total_micros: int
    ledger_digest: str | None
    computed_root: str | None
    settlement: dict | None  # the settlement_root row (and its record's tx) when the epoch is settled
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Claims read back from the chain (`sync-claims`) against roots up to this epoch: claims, accounts, paid_micros.
    claims_paid: dict | None = None
    # Per `holders:<token>` recipient of the epoch: token, take_micros, holders_paid, paid_micros, dust_change_micros,
    # dust_carried_micros (after the epoch), dust_holders (holders carrying dust after it), waiting_micros.
    holder_tokens: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=holder_token_schema))

    @property
    def holder_dust_change_micros(self) -> int:
        """What the token holders' carried dust grew by in the epoch (conservation counts it)."""
        return int(self.holder_tokens["dust_change_micros"].sum() or 0) if self.holder_tokens.height else 0

    @property
    def conserved(self) -> bool:
        return self.conservation_difference_micros == 0 and self.reconciled

    @property
    def reconciled(self) -> bool:
        rows = self.reconciliation
        return rows.height > 0 and int(rows["items_off"].sum()) == 0 and int(rows["difference_micros"].sum()) == 0

    @property
    def conservation_difference_micros(self) -> int:
        e, p = self.epoch, self.previous or {}
        left = (
            e["payable_micros"]
            + (e["suspense_micros"] - p.get("suspense_micros", 0))
            + self.holder_dust_change_micros
            - (e["receivable_micros"] - p.get("receivable_micros", 0))
        )
        return left - (e["fee_micros"] - e["reversed_micros"])


def _frame(ledger: Ledger, sql: str, params: list | None = None) -> pl.DataFrame:
    return ledger.recorder.frame(sql, params)


def _table_exists(ledger: Ledger, name: str) -> bool:
    return name in ledger.recorder.existing_tables()


def _arrived(
    ledger: Ledger,
    table: str,
    window: tuple[int, int],
    select: str,
    empty: dict,
    params: list,
    union_by_name: bool = False,
) -> pl.DataFrame:
    """`select` over the rows of a ledger file table whose data files arrived in the snapshot range (window]:
    only those files are read, so the cost follows the epoch's size, not the ledger's. `union_by_name`: files
    written by older ledger formats may lack a column added since."""
    previous, closing = window
    files = ledger.recorder.read(
        lambda connection: data_files(connection, table, closing), f"list the files of `{table}`"
    ).filter(pl.col("snapshot") > previous)
    if files.is_empty():
        return pl.DataFrame(schema=empty)
    rows = "read_parquet(?, union_by_name = true)" if union_by_name else "read_parquet(?)"
    return _frame(ledger, select.replace("{rows}", rows), [files["path"].to_list(), *params])


def dead_letters_by_reason_code(by_reason: pl.DataFrame) -> pl.DataFrame:
    """(reason_code, messages, example) from counts by (reason_code, reason, error_field), largest first.

    Rows stored before ledger format 6 have no code: it is derived from their reason text, as the
    `dead_letters` view does. Every message is counted under exactly one code.
    """
    if by_reason.is_empty():
        return pl.DataFrame(schema={"reason_code": pl.String, "messages": pl.Int64, "example": pl.String})
    if "reason_code" not in by_reason.columns:
        by_reason = by_reason.with_columns(reason_code=pl.lit(None, pl.String))
    codes = [
        code if code is not None else str(reason_code_of(reason, error_field))
        for code, reason, error_field in by_reason.select("reason_code", "reason", "error_field").iter_rows()
    ]
    return (
        by_reason.with_columns(reason_code=pl.Series(codes, dtype=pl.String))
        .sort(["messages", "reason"], descending=[True, False])
        .group_by("reason_code", maintain_order=True)
        .agg(pl.col("messages").sum(), pl.col("reason").first().alias("example"))
        .sort(["messages", "reason_code"], descending=[True, False])
    )


def gather(ledger: Ledger, epoch: int) -> ReportData:
    """Read every figure of epoch `epoch`'s report from the ledger."""
    closing_snapshot(ledger, epoch)  # raises when the epoch is not closed
    define_views(ledger)
    epochs = _frame(ledger, "SELECT * FROM epochs WHERE epoch IN (?, ?)", [epoch, epoch - 1])
    this_epoch = epochs.filter(pl.col("epoch") == epoch).row(0, named=True)
    previous = epochs.filter(pl.col("epoch") == epoch - 1)
    window = (this_epoch["previous_snapshot"], this_epoch["closing_snapshot"])
    asset = _frame(ledger, "SELECT coalesce(any_value(asset), '') AS asset FROM inference_events").item()
    payables = _frame(
        ledger,
        """SELECT recipient, payout_address, amount_micros, cumulative_micros FROM payables
           WHERE epoch = ? ORDER BY amount_micros DESC, recipient""",
        [epoch],
    )
    reconciliation = _frame(
        ledger,
        "SELECT check_name, items_checked, items_off, difference_micros FROM reconciliation "
        "WHERE epoch = ? ORDER BY check_name",
        [epoch],
    )
    postings = _frame(ledger, "SELECT count(*) AS postings FROM postings WHERE epoch = ?", [epoch]).item()
    digest, root = _digest_and_root(ledger, epoch, this_epoch["closing_snapshot"])
    return ReportData(
        epoch=this_epoch,
        previous=previous.row(0, named=True) if previous.height else None,
        asset=asset,
        fees_by_day_model=_fees_by_day_model(ledger, window),
        top_payees=payables.head(chart_payees_max),
        payee_changes=_payee_changes(ledger, epoch),
        lineage_flows=_lineage_flows(ledger, epoch),
        suspense_held=_suspense_held(ledger, epoch),
        dead_letters=dead_letters_by_reason_code(_dead_letter_counts(ledger, window)),
        reconciliation=reconciliation,
        recipients=payables.height,
        postings=postings,
        payable_total_micros=int(payables["amount_micros"].sum() or 0),
        ledger_digest=digest,
        computed_root=root,
        settlement=_settlement_of(ledger, epoch),
        claims_paid=_claims_paid(ledger, epoch),
        holder_tokens=_holder_tokens(ledger, epoch),
    )


def _holder_tokens(ledger: Ledger, epoch: int) -> pl.DataFrame:
    """Per token whose holders a policy paid in the epoch: the take passed on (`holders` entries), how many holders
    it credited and how much, the dust carried (its change in the epoch, the total and the holders carrying after
    it), and a take still waiting on `holders:<token>` (no weighted holder)."""
    dust_holders = (
        "SELECT token, count(*) AS dust_holders FROM (SELECT token, holder, arg_max(carried_micros, epoch) AS c "
        "FROM holder_dust WHERE epoch <= $epoch GROUP BY ALL) WHERE c <> 0 GROUP BY token"
        if _table_exists(ledger, "settlement_holder_dust")
        else "SELECT NULL::VARCHAR AS token, 0::BIGINT AS dust_holders WHERE false"
    )
    frame = _frame(
        ledger,
        f"""WITH entries AS (
                SELECT substr(entry_id, strpos(entry_id, ':') + 1 + length({sql_literal(holders_prefix)})) AS token,
                       account, amount_micros
                FROM postings WHERE epoch = $epoch AND entry_kind = 'holders'),
            passed AS (
                SELECT token,
                       sum(amount_micros) FILTER (WHERE account = {_holders} || token) AS take_micros,
                       count(*) FILTER (WHERE account <> {_holders} || token AND NOT starts_with(account, {_dust}))
                           AS holders_paid,
                       -sum(amount_micros) FILTER (WHERE account <> {_holders} || token
                                                     AND NOT starts_with(account, {_dust})) AS paid_micros,
                       -sum(amount_micros) FILTER (WHERE starts_with(account, {_dust})) AS dust_change_micros
                FROM entries GROUP BY token),
            carried AS (
                SELECT substr(account, length({_dust}) + 1) AS token, -sum(amount_micros) AS dust_carried_micros
                FROM postings WHERE epoch <= $epoch AND starts_with(account, {_dust}) GROUP BY 1),
            waiting AS (
                SELECT substr(recipient, length({sql_literal(holders_prefix)}) + 1) AS token,
                       credited_micros AS waiting_micros
                FROM payables WHERE epoch = $epoch AND starts_with(recipient, {sql_literal(holders_prefix)})),
            counted AS ({dust_holders})
        SELECT token, coalesce(take_micros, 0) AS take_micros, coalesce(holders_paid, 0) AS holders_paid,
               coalesce(paid_micros, 0) AS paid_micros, coalesce(dust_change_micros, 0) AS dust_change_micros,
               coalesce(dust_carried_micros, 0) AS dust_carried_micros, coalesce(dust_holders, 0) AS dust_holders,
               coalesce(waiting_micros, 0) AS waiting_micros
        FROM passed FULL JOIN waiting USING (token) LEFT JOIN carried USING (token) LEFT JOIN counted USING (token)
        ORDER BY token""",
        {"epoch": epoch},
    )
    return frame.cast(holder_token_schema) if frame.height else pl.DataFrame(schema=holder_token_schema)  # type: ignore[arg-type]


def _fees_by_day_model(ledger: Ledger, window: tuple[int, int]) -> pl.DataFrame:
    return _arrived(
        ledger,
        "inference_metered",
        window,
        """SELECT event_date, model_id, sum(fee_micros)::BIGINT AS fee_micros FROM {rows}
           GROUP BY ALL ORDER BY event_date, model_id""",
        {"event_date": pl.Date, "model_id": pl.String, "fee_micros": pl.Int64},
        [],
    )


def _payee_changes(ledger: Ledger, epoch: int) -> pl.DataFrame:
    """The payees whose payable changed most against the previous epoch."""
    return _frame(
        ledger,
        """SELECT coalesce(n.recipient, p.recipient) AS recipient, coalesce(n.amount_micros, 0) AS amount_micros,
                  coalesce(p.amount_micros, 0) AS previous_micros,
                  coalesce(n.amount_micros, 0) - coalesce(p.amount_micros, 0) AS change_micros
           FROM (SELECT * FROM payables WHERE epoch = ?) n FULL JOIN (SELECT * FROM payables WHERE epoch = ?) p
             ON n.recipient = p.recipient
           ORDER BY abs(change_micros) DESC, recipient LIMIT ?""",
        [epoch, epoch - 1, table_rows_max],
    )


def _lineage_flows(ledger: Ledger, epoch: int) -> pl.DataFrame:
    """What flowed from each derived model to each parent model in the epoch's splits."""
    return _frame(
        ledger,
        f"""SELECT model_id AS derived_model, substr(account, length({_model}) + 1) AS parent_model,
                  (-sum(amount_micros))::BIGINT AS flowed_micros
           FROM postings
           WHERE epoch = ? AND entry_kind = 'split' AND starts_with(account, {_model})
             AND account <> {_model} || model_id
             AND amount_micros < 0
           GROUP BY ALL ORDER BY flowed_micros DESC, derived_model, parent_model""",
        [epoch],
    )


def _suspense_held(ledger: Ledger, epoch: int) -> pl.DataFrame:
    """What suspense holds after the epoch, by model (empty on a ledger that never suspended anything)."""
    if not _table_exists(ledger, "settlement_suspense_item"):
        columns = {"model_id": pl.String, "events": pl.Int64, "held_micros": pl.Int64}
        return pl.DataFrame(schema={**columns, "oldest_event_time": pl.Datetime})
    return _frame(
        ledger,
        """SELECT model_id, count(*) AS events, sum(fee_micros)::BIGINT AS held_micros,
                  min(event_time) AS oldest_event_time
           FROM suspense_items WHERE suspended_epoch <= ? AND (released_epoch IS NULL OR released_epoch > ?)
           GROUP BY ALL ORDER BY held_micros DESC LIMIT ?""",
        [epoch, epoch, table_rows_max],
    )


def _dead_letter_counts(ledger: Ledger, window: tuple[int, int]) -> pl.DataFrame:
    """Counts of the dead letters that arrived in the epoch, by (reason_code, reason, error_field)."""
    return _arrived(
        ledger,
        "dead_letter",
        window,
        """SELECT COLUMNS(c -> c IN ('reason_code', 'reason', 'error_field')), count(*) AS messages FROM {rows}
           GROUP BY ALL""",
        {"reason_code": pl.String, "reason": pl.String, "error_field": pl.String, "messages": pl.Int64},
        [],
        union_by_name=True,
    )


def _settlement_of(ledger: Ledger, epoch: int) -> dict | None:
    """The epoch's settlement_root row with its latest record's transaction, None when it is not settled."""
    if not _table_exists(ledger, "settlement_root"):
        return None
    rows = _frame(ledger, f"SELECT * FROM {recorder.table('settlement_root')} WHERE epoch = ?", [epoch])
    if not rows.height:
        return None
    settlement = rows.row(0, named=True)
    if _table_exists(ledger, "settlement_record"):
        records = _frame(
            ledger,
            f"SELECT tx_hash, block_number, chain_id, contract FROM {recorder.table('settlement_record')} "
            "WHERE epoch = ? ORDER BY recorded_at DESC LIMIT 1",
            [epoch],
        )
        if records.height:
            settlement |= records.row(0, named=True)
    return settlement


def _claims_paid(ledger: Ledger, epoch: int) -> dict | None:
    """What the distributor paid out against this epoch's root and earlier ones, None before any claim sync."""
    if not _table_exists(ledger, "settlement_claim"):
        return None
    return _frame(
        ledger,
        f"""SELECT count(*) AS claims, count(DISTINCT account) AS accounts,
                   coalesce(sum(amount_units), 0)::BIGINT AS paid_micros
            FROM {recorder.table("settlement_claim")} WHERE epoch <= ?""",
        [epoch],
    ).row(0, named=True)


def _digest_and_root(ledger: Ledger, epoch: int, closing: int) -> tuple[str | None, str | None]:
    """The ledger digest and payout root the settlement proposes for this epoch, computed as `royalty settle` does.

    Under settlement-v2 the digest is the SHA-256 of the manifest stored with the tree; before the tree is written
    it is not known yet (None), and an epoch settled under settlement-v1 gets its leaf digest recomputed."""
    from settlement.onchain.payout_tree import build_epoch_tree, manifest_digest
    from settlement.onchain.settle import read_stored_manifest, read_stored_tree

    payables = _frame(
        ledger,
        "SELECT epoch, recipient, amount_micros, payout_address "
        f"FROM {recorder.table('settlement_payable')} WHERE epoch <= ?",
        [epoch],
    )
    tree = build_epoch_tree(epoch, closing, payables)
    if tree is None:
        return None, None
    def stored_of(connection: duckdb.DuckDBPyConnection) -> tuple:
        manifest = read_stored_manifest(connection, epoch)  # the tree is read only for an epoch without one
        return manifest, None if manifest is not None else read_stored_tree(connection, epoch)

    manifest, stored = ledger.recorder.read(stored_of, f"read epoch {epoch}'s manifest and tree")
    if manifest is not None:
        return manifest_digest(manifest), tree.root_hex
    if stored is None:
        return None, tree.root_hex
    return tree.ledger_digest, tree.root_hex


# --- rendering -----------------------------------------------------------------------------------------------


def money(micros: int) -> str:
    """Integer micros as a decimal amount of the asset, e.g. 1234567 -> '1.234567'."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(int(micros)), micros_per_unit)
    return f"{sign}{whole:,}.{fraction:06d}"


def _e(value: object) -> str:
    return html.escape(str(value))


def _shortened(text: str | None, length_max: int = 120) -> str:
    """A reason text cut to `length_max` characters (a reason may quote a whole message)."""
    text = text or ""
    return text if len(text) <= length_max else text[: length_max - 1] + "…"


def _scaled(value: int, largest: int, length_px: int) -> int:
    """Floor of value/largest of length_px: integer pixels, the remainder is simply not drawn."""
    return 0 if largest <= 0 else max(0, int(value) * length_px // int(largest))


def svg_stacked_bars(title: str, fees: pl.DataFrame, asset: str) -> str:
    """Fees per day, stacked by model (the top models by fee, the rest as 'other')."""
    if fees.is_empty():
        return f'<p class="empty">{_e(title)}: no fees in this epoch.</p>'
    top = (
        fees.group_by("model_id")
        .agg(pl.col("fee_micros").sum())
        .sort(["fee_micros", "model_id"], descending=[True, False])
    )["model_id"].to_list()[:chart_models_max]
    frame = fees.with_columns(
        series=pl.when(pl.col("model_id").is_in(top)).then(pl.col("model_id")).otherwise(pl.lit("other"))
    )
    series = top + (["other"] if frame["series"].eq("other").any() else [])
    days = sorted(frame["event_date"].unique().to_list())
    totals = {
        (row["event_date"], row["series"]): int(row["fee_micros"])
        for row in frame.group_by(["event_date", "series"]).agg(pl.col("fee_micros").sum()).iter_rows(named=True)
    }
    day_totals = [sum(totals.get((day, s), 0) for s in series) for day in days]
    width, height, left, bottom, top_px = 720, 300, 90, 40, 20
    plot_h = height - bottom - top_px
    # Floor division: the plot keeps its width whatever the number of days; the leftover pixels stay blank.
    slot_w = max(1, (width - left - 170) // len(days))
    gap_w = min(6, slot_w // 4)
    bar_w = max(1, slot_w - gap_w)
    label_every = max(1, (len(days) * 110) // (width - left - 170) + 1)  # about 110 px per date label
    largest = max(day_totals)
    parts = [_svg_open("fees-by-day-model", title, width, height)]
    parts.append(_axis_y(left, top_px, plot_h, largest, asset))
    for index, day in enumerate(days):
        x = left + gap_w + index * slot_w
        y = top_px + plot_h
        for color, name in zip(palette, series, strict=False):
            value = totals.get((day, name), 0)
            # A value too small for a whole pixel still gets one, so no model silently vanishes from a day.
            h = max(1, _scaled(value, largest, plot_h)) if value > 0 else 0
            if h:
                y -= h
                parts.append(
                    f'<rect x="{x}" y="{y}" width="{bar_w}" height="{h}" fill="{color}">'
                    f"<title>{_e(day)} {_e(name)}: {money(value)} {_e(asset)}</title></rect>"
                )
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w // 2}" y="{height - bottom + 16}" text-anchor="middle" class="tick">'
                f"{_e(day)}</text>"
            )
    for index, (color, name) in enumerate(zip(palette, series, strict=False)):
        y = top_px + index * 18
        parts.append(f'<rect x="{width - 160}" y="{y}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{width - 142}" y="{y + 10}" class="legend">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_horizontal_bars(chart_id: str, title: str, labels: list[str], values: list[int], asset: str) -> str:
    """One bar per label, longest first, with the amount written after each bar."""
    if not labels:
        return f'<p class="empty">{_e(title)}: nothing in this epoch.</p>'
    row_h, left, width = 22, 260, 720
    height = row_h * len(labels) + 10
    largest = max(values)
    parts = [_svg_open(chart_id, title, width, height)]
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 5 + index * row_h
        w = _scaled(value, largest, width - left - 150)
        parts.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" class="tick">{_e(label)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y + 2}" width="{max(1, w)}" height="{row_h - 6}" fill="{palette[0]}">'
            f"<title>{_e(label)}: {money(value)} {_e(asset)}</title></rect>"
        )
        parts.append(f'<text x="{left + w + 6}" y="{y + 14}" class="tick">{money(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(chart_id: str, title: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" id="{chart_id}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-label="{_e(title)}">'
        f"<title>{_e(title)}</title>"
    )


def _tick_label(micros: int) -> str:
    """A round amount without trailing zeros: 2500000 micros -> '2.5'."""
    whole, fraction = divmod(micros, micros_per_unit)
    return f"{whole:,}" + (f".{fraction:06d}".rstrip("0") if fraction else "")


def hash_html(value: str, ident: str = "") -> str:
    """A hash in monospace, breakable every 16 hex digits (<wbr>: a copy still gives the hash whole)."""
    text = str(value)
    groups = [text[i : i + 16] for i in range(0, len(text), 16)]
    ident = f' id="{ident}"' if ident else ""
    return f'<code class="hash"{ident} title="{_e(text)}">' + "<wbr>".join(_e(g) for g in groups) + "</code>"


def tick_step_micros(largest_micros: int, ticks_max: int = 5) -> int:
    """A round step (1, 2 or 5 times a power of ten, in micros) giving at most `ticks_max` ticks above zero."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if largest_micros <= step * factor * ticks_max:
                return step * factor
        step *= 10


def _axis_y(left: int, top_px: int, plot_h: int, largest: int, asset: str) -> str:
    parts = [f'<line x1="{left}" y1="{top_px}" x2="{left}" y2="{top_px + plot_h}" stroke="#888"/>']
    step_micros = tick_step_micros(largest)
    for value in range(0, largest + 1, step_micros):
        y = top_px + plot_h - _scaled(value, largest, plot_h)
        parts.append(f'<line x1="{left - 4}" y1="{y}" x2="{left}" y2="{y}" stroke="#888"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" class="tick">{_tick_label(value)}</text>')
    parts.append(
        f'<text x="12" y="{top_px + plot_h // 2}" class="tick" transform="rotate(-90 12 {top_px + plot_h // 2})" '
        f'text-anchor="middle">{_e(asset)}</text>'
    )
    return "".join(parts)


def _table(headers: list[str], rows: list[list[object]], numeric_from: int = 1, table_id: str = "") -> str:
    if not rows:
        return '<p class="empty">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{_e(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_css = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} .ok{color:#1a7f37;font-weight:600}
.bad{color:#c62828;font-weight:600} .muted{color:#666} .empty{color:#666;font-style:italic}
code{font-size:.9em;word-break:break-all} svg .tick{font-size:11px;fill:#333} svg .legend{font-size:12px;fill:#222}
.sign{margin-top:2em;padding:1em;border:1px dashed #999}
code.hash{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:normal}
"""


def render_html(data: ReportData) -> str:
    """The whole page as one string."""
    epoch, asset = data.epoch, data.asset
    totals, changes = _figure_tables(data)
    reconciliation, payee_changes, suspense = _row_tables(data)
    fees_chart, payees_chart, flows_chart = _charts(data)
    dead, dead_total = _dead_letters_table(data)
    conservation = _conservation(data)
    root = _settled_root(data) if data.settlement else _unsettled_root(data)
    dates = data.fees_by_day_model["event_date"]
    dated = (
        f"events dated {_e(dates.min())} to {_e(dates.max())} ({dates.n_unique():,} days)"
        if len(dates)
        else "no metered events"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Settlement report, epoch {epoch["epoch"]}</title>
<style>{_css}</style></head>
<body>
<h1>Settlement report — epoch {epoch["epoch"]}</h1>
<p class="muted">{dated}, closed {_e(epoch["closed_at"])};
amounts in {_e(asset)} (integer micros shown with six decimals);
generated {_e(data.generated_at.isoformat(timespec="seconds"))}</p>
<h2>Totals</h2>
{totals}
<h2>Conservation</h2>
{conservation}
{reconciliation}
<h2>Fees by day and model</h2>
{fees_chart}
<h2>Top payees</h2>
{payees_chart}
{_top_payees_table(data)}
<h2>Lineage flows</h2>
{flows_chart}
<h2>Token holders</h2>
{_holder_tokens_table(data)}
<h2>Changes against the previous epoch</h2>
{changes}
<h3>Largest changes per recipient</h3>
{payee_changes}
<h2>Suspense</h2>
<p>Events held after this epoch because their route was incomplete (by model, largest first).</p>
{suspense}
<h2>Dead letters</h2>
<p>Messages of this epoch's snapshot range that broke the contract, by reason code (docs/analytics.md says what
the producer should do for each): <strong id="dead-letters-total">{dead_total:,}</strong> in all; reversal dead
letters: {epoch["dead_letter_count"]:,}.</p>
{dead}
<h2>Root and ledger digest</h2>
{root}
<div class="sign">Reviewed and approved for proposal: ____________________ date: __________</div>
</body></html>
"""


def _row_tables(data: ReportData) -> tuple[str, str, str]:
    """The reconciliation checks, each payee's change against the previous epoch, and the suspense held by model."""
    asset = data.asset
    reconciliation = _table(
        ["check", "items checked", "items off", f"difference ({asset})"],
        [
            [r["check_name"], f"{r['items_checked']:,}", f"{r['items_off']:,}", money(r["difference_micros"])]
            for r in data.reconciliation.iter_rows(named=True)
        ],
        table_id="reconciliation",
    )
    payee_changes = _table(
        ["recipient", "previous epoch", "this epoch", "change"],
        [
            [r["recipient"], money(r["previous_micros"]), money(r["amount_micros"]), money(r["change_micros"])]
            for r in data.payee_changes.iter_rows(named=True)
        ],
    )
    suspense = _table(
        ["model", "events", f"held ({asset})", "oldest call"],
        [
            [r["model_id"], f"{r['events']:,}", money(r["held_micros"]), r["oldest_event_time"]]
            for r in data.suspense_held.iter_rows(named=True)
        ],
        table_id="suspense",
    )
    return reconciliation, payee_changes, suspense


def _figure_tables(data: ReportData) -> tuple[str, str]:
    """The epoch's figures (`settlement.engine.figures`), and the same against the previous epoch."""
    this_epoch, previous = data.epoch, data.previous or {}
    figures = report_figures()

    def show(value: int, is_money: bool) -> str:
        return money(value) if is_money else f"{value:,}"

    totals = _table(
        ["figure", f"epoch {this_epoch['epoch']}"],
        [[name, show(this_epoch[key], is_money)] for name, key, is_money in figures]
        + [["recipients", f"{data.recipients:,}"], ["postings", f"{data.postings:,}"]],
        table_id="totals",
    )
    changes = _table(
        [
            "figure",
            f"epoch {this_epoch['epoch'] - 1}" if data.previous else "previous",
            f"epoch {this_epoch['epoch']}",
            "change",
        ],
        [
            [
                name,
                show(previous.get(key, 0), is_money),
                show(this_epoch[key], is_money),
                show(this_epoch[key] - previous.get(key, 0), is_money),
            ]
            for name, key, is_money in figures
        ],
        table_id="changes",
    )
    return totals, changes


def _holder_tokens_table(data: ReportData) -> str:
    """Each `holders:<token>` recipient of the epoch: holders paid, what they were paid, and the dust carried."""
    if data.holder_tokens.is_empty():
        return '<p class="empty">No policy paid token holders in this epoch.</p>'
    asset = data.asset
    return (
        "<p>Each token whose holders a policy paid: its take, passed on by time-weighted balance; the holders "
        "credited; the dust carried for holders whose accumulated part is below <code>holder_dust_units_min</code> "
        "(paid when it reaches it); a take waiting on <code>holders:&lt;token&gt;</code> has no weighted holder.</p>"
        + _table(
            ["token", f"take ({asset})", "holders paid", f"paid ({asset})", f"dust change ({asset})",
             f"dust carried ({asset})", "holders carrying dust", f"waiting ({asset})"],
            [
                [f"holders:{r['token']}", money(r["take_micros"]), f"{r['holders_paid']:,}", money(r["paid_micros"]),
                 money(r["dust_change_micros"]), money(r["dust_carried_micros"]), f"{r['dust_holders']:,}",
                 money(r["waiting_micros"])]
                for r in data.holder_tokens.iter_rows(named=True)
            ],
            table_id="holder-tokens",
        )
    )


def _conservation(data: ReportData) -> str:
    """The conservation line: payable + Δsuspense − Δreceivables against fees − reversed, with its verdict."""
    this_epoch, previous = data.epoch, data.previous or {}
    verdict = (
        '<span class="ok" id="conservation-verdict">balanced</span>'
        if data.conserved
        else '<span class="bad" id="conservation-verdict">NOT balanced</span>'
    )
    dust = (
        f" + Δholder dust {money(data.holder_dust_change_micros)}" if data.holder_dust_change_micros else ""
    )
    return (
        f"<p>payable {money(this_epoch['payable_micros'])} + Δsuspense "
        f"{money(this_epoch['suspense_micros'] - previous.get('suspense_micros', 0))}{dust} − Δreceivables "
        f"{money(this_epoch['receivable_micros'] - previous.get('receivable_micros', 0))} = fees "
        f"{money(this_epoch['fee_micros'])} − reversed "
        f'{money(this_epoch["reversed_micros"])}: difference <strong id="conservation-difference">'
        f"{money(data.conservation_difference_micros)}</strong> {_e(data.asset)} — {verdict}</p>"
    )


def _charts(data: ReportData) -> tuple[str, str, str]:
    """Fees by day and model, the top payees, and the lineage flows, as SVG."""
    asset = data.asset
    fees_chart = svg_stacked_bars(f"Fees by day and model ({asset})", data.fees_by_day_model, asset)
    payees_chart = svg_horizontal_bars(
        "top-payees",
        f"Top payees ({asset})",
        data.top_payees["recipient"].to_list(),
        [int(v) for v in data.top_payees["amount_micros"].to_list()],
        asset,
    )
    flows = data.lineage_flows.head(chart_flows_max)
    flows_chart = svg_horizontal_bars(
        "lineage-flows",
        f"Lineage flows: derived model → parent ({asset})",
        [f"{r['derived_model']} → {r['parent_model']}" for r in flows.iter_rows(named=True)],
        [int(v) for v in flows["flowed_micros"].to_list()],
        asset,
    )
    return fees_chart, payees_chart, flows_chart


def _top_payees_table(data: ReportData) -> str:
    """The top payees with their payout address and share of the epoch's payable (parts per million, shown in %)."""
    total = data.payable_total_micros
    rows = []
    for row in data.top_payees.iter_rows(named=True):
        share_ppm = row["amount_micros"] * 1_000_000 // total if total > 0 else 0
        address = row["payout_address"] or "none: held until one is registered"
        rows.append(
            [
                row["recipient"],
                address,
                money(row["amount_micros"]),
                f"{share_ppm // 10_000}.{share_ppm % 10_000:04d} %",
            ]
        )
    return _table(
        ["recipient", "payout address", f"payable ({data.asset})", "share of payable"], rows, 2, "top-payees-table"
    )


def _dead_letters_table(data: ReportData) -> tuple[str, int]:
    """The dead letters by reason code, with their total."""
    dead_total = int(data.dead_letters["messages"].sum() or 0)
    table = _table(
        ["reason code", "example reason", "messages"],
        [
            [r["reason_code"], _shortened(r["example"]), f"{r['messages']:,}"]
            for r in data.dead_letters.iter_rows(named=True)
        ]
        + ([["total", "", f"{dead_total:,}"]] if dead_total else []),
        numeric_from=2,
        table_id="dead-letters",
    )
    return table, dead_total


def _settled_root(data: ReportData) -> str:
    """The stored root, its proposal and digest; a warning when the payables now give another digest."""
    settled = data.settlement or {}
    tx = (
        f"; proposed in tx {hash_html(settled['tx_hash'])} (block {settled['block_number']:,})"
        if "tx_hash" in settled
        else ""
    )
    chain = (
        f'<p>chain id <strong id="chain-id">{settled["chain_id"]}</strong>, distributor '
        f"{hash_html(settled['contract'], 'distributor')}</p>"
        if settled.get("contract")
        else ""
    )
    root = (
        f"{chain}<p>root {hash_html(settled['root'], 'root')} over {settled['leaf_count']:,} leaves, total "
        f"{money(settled['total_units'])} {_e(data.asset)}{tx}.</p>"
        f"<p>ledger digest {hash_html(settled['ledger_digest'], 'ledger-digest')}</p>{_claims_line(data)}"
        f"{_audit_line(data, settled)}"
    )
    if data.ledger_digest and data.ledger_digest != settled["ledger_digest"]:
        root += (
            f'<p class="bad">the payables now give digest <code>{_e(data.ledger_digest)}</code>, not the stored one</p>'
        )
    return root


def _audit_line(data: ReportData, settled: dict) -> str:
    """How anyone checks this root from the epoch's published bundle (issue 18)."""
    epoch = int(data.epoch["epoch"])
    chain = (
        f" --rpc-url URL --distributor {_e(settled['contract'])}" if settled.get("contract") else ""
    )
    return (
        f'<p id="audit-command">anyone can recompute this root from the epoch\'s bundle: '
        f"<code>royalty publish --epoch {epoch} --to bundle-epoch-{epoch}</code>, then "
        f"<code>royalty audit --bundle bundle-epoch-{epoch}{chain}</code> (docs/settlement.md, Verifying an epoch)</p>"
    )


def _claims_line(data: ReportData) -> str:
    claims = data.claims_paid
    if not claims:
        return '<p id="claims-paid">claims paid: none read back yet (`royalty sync-claims` reads them)</p>'
    return (
        f'<p id="claims-paid">claims paid (read back from the chain): {claims["claims"]:,} claims by '
        f"{claims['accounts']:,} accounts, {money(claims['paid_micros'])} {_e(data.asset)}</p>"
    )


def _unsettled_root(data: ReportData) -> str:
    """The digest and root `royalty settle` would propose from the payables as they are."""
    digest = (
        hash_html(data.ledger_digest, "ledger-digest")
        if data.ledger_digest
        else '<code id="ledger-digest">the SHA-256 of the epoch\'s manifest.json, fixed when the tree is written</code>'
        if data.computed_root
        else '<code id="ledger-digest">none: no address is owed</code>'
    )
    root = f" and root {hash_html(data.computed_root)}" if data.computed_root else ""
    return (
        '<p><strong id="root">not settled yet</strong>: no root has been written for this epoch.</p>'
        f"<p>ledger digest {digest}{root}, as `royalty settle` will propose them from these payables.</p>"
    )


def write_report(ledger: Ledger, epoch: int, out: Path) -> ReportData:
    """Gather epoch `epoch`'s figures and write its page to `out`; return the figures."""
    data = gather(ledger, epoch)
    Path(out).write_text(render_html(data), encoding="utf-8")
    return data
