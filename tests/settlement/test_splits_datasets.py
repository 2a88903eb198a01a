"""The split properties with on-chain datasets in the DAG: a model's policy names `dataset:<id>`, whose own
policy splits that share again among its contributors (settlement.chain_registry maps the chain's datasets so).

Same properties as tests/settlement/test_splits_properties.py (conservation, determinism, the exact-share
bound through lineage), on worlds that hold datasets, registered or not.
"""

import polars as pl
from hypothesis import HealthCheck, given, settings

from tests.settlement.split_world import exact_credits, run_epochs, worlds

fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(worlds(epochs_max=2, with_datasets=True))
def test_with_datasets_every_epoch_balances_and_model_accounts_pass_through(world):
    """Conservation: each entry sums to 0, fees = payables + suspense - receivables, and the pass-through
    accounts (models, and datasets as `model:dataset:<id>`) end every epoch at zero."""
    receivable_before = suspense_before = 0
    for plan in run_epochs(world):
        assert plan.postings.group_by("entry_id").agg(pl.col("amount_micros").sum())["amount_micros"].eq(0).all()
        moved = plan.payable_micros + (plan.suspense_micros - suspense_before)
        assert moved - (plan.receivable_micros - receivable_before) == plan.fee_micros - plan.reversed_micros
        model_balances = plan.postings.filter(pl.col("account").str.starts_with("model:"))
        assert model_balances["amount_micros"].sum() == 0
        assert not plan.payables["recipient"].str.starts_with("dataset:").any(), "a dataset is never paid itself"
        receivable_before, suspense_before = plan.receivable_micros, plan.suspense_micros


@fast
@given(worlds(epochs_max=2, with_datasets=True))
def test_with_datasets_shuffled_events_give_identical_rows(world):
    """Determinism: another event order changes no posting, payable or suspense row."""
    for one, two in zip(run_epochs(world), run_epochs(world, order_seed=7), strict=True):
        assert one.postings.equals(two.postings)
        assert one.payables.equals(two.payables)
        assert one.suspense_items.equals(two.suspense_items)


@fast
@given(worlds(epochs_max=1, with_datasets=True))
def test_with_datasets_each_recipient_is_within_its_allocation_count_of_the_exact_share(world):
    """Lineage: against a `fractions` reference that follows model and dataset shares down the DAG, each
    recipient's credit is within one unit per allocation feeding it."""
    world.reversals = []
    for record in (*world.policies, *world.models):
        record["known_snapshot"] = 1
    (plan,) = run_epochs(world)
    exact, feeding = exact_credits(world, world.events, snapshot=1)
    credited = dict(zip(plan.payables["recipient"], plan.payables["credited_micros"], strict=True))
    for recipient in set(exact) | set(credited):
        error = abs(credited.get(recipient, 0) - exact.get(recipient, 0))
        assert error <= len(feeding.get(recipient, ())), (recipient, error, exact.get(recipient))
    assert sum(credited.values()) + plan.suspended_micros == plan.fee_micros
