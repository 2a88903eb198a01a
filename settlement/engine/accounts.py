"""The accounts of the settlement's double-entry postings, defined once.

`payer:<id>` is debited what it owes, `model:<id>` is a pass-through account (it ends every epoch at
zero), `contributor:<id>` is credited what it earned and `suspense` what it holds. The model prefix is
the producer contract's (`schemas.fields`: a split policy names a parent model as `model:<id>`). The
SQL of the exports, the HTML report and the settlement's analyst views (`settlement/views.sql`, filled in by
`settlement.views`) use these; only the SQL reference (`reference_sql.py`, an independent implementation on
purpose) spells them out.
"""

from schemas.fields import holders_recipient_prefix, model_recipient_prefix

model_prefix = model_recipient_prefix
contributor_prefix = "contributor:"
# A dataset of the on-chain registry, as a policy names it: its share is split again by the dataset's own policy,
# through the pass-through account `model:dataset:<id>` (docs/registry.md).
dataset_prefix = "dataset:"
# The holders of an ERC-20 (`holders:<token address>`): credited like a contributor by the split, then passed on
# in the same epoch to `contributor:<holder address>` by time-weighted balance (settlement.engine.holders).
holders_prefix = holders_recipient_prefix
# What a token's holders' parts below `holder_dust_units_min` add up to, carried forward per holder
# (`holders-dust:<token address>`): credited when a part is carried, debited when the holder is paid it.
holder_dust_prefix = "holders-dust:"
payer_prefix = "payer:"
suspense_account = "suspense"


def sql_literal(text: str) -> str:
    """`text` as a SQL string literal (the prefixes above hold no quote; this keeps it so)."""
    return "'" + text.replace("'", "''") + "'"
