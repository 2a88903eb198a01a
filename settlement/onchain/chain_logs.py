"""Reading the distributor's event logs in bounded block ranges, from the block it was deployed in.

Public JSON-RPC providers refuse `eth_getLogs` over a long block range (many above 10,000 blocks, some
above 2,000), and a read from block 0 of a contract deployed last year asks for millions. So every log
read of settlement (`settle`'s RootProposed / RootRevoked, `sync-claims`' Claimed) goes through
`read_logs`, which asks for at most `block_span_max` blocks at a time, and starts no earlier than the
distributor's deployment block (`log_start_block`): the `from_block` setting (`--from-block`, printed by
`royalty deploy` as `deployment_block`), else found on the chain by a binary search over `eth_getCode`
(which needs a node that keeps old state); a node that cannot answer is a clear error naming the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
from web3.contract import Contract
from web3.exceptions import BlockNotFound

from ledger.ledger import Ledger
from ledger.redact import redact_url
from settlement.onchain.chain import Chain, node_unreachable_errors
from settlement.onchain.exceptions import ChainConfigError, ChainReorganisedError, ChainUnavailableError

# Many public JSON-RPC providers refuse `eth_getLogs` over more than 10,000 blocks (some 2,000);
# 2,000 keeps every provider answering, and in `sync-claims` a range is also one ledger transaction.
block_span_max = 2_000


def block_ranges(from_block: int, to_block: int, span_blocks: int | None = None) -> Iterator[tuple[int, int]]:
    """Inclusive (start, end) ranges of at most `span_blocks` blocks covering `from_block..to_block`."""
    span = span_blocks or block_span_max
    start = from_block
    while start <= to_block:
        end = min(start + span - 1, to_block)
        yield start, end
        start = end + 1


def read_logs(
    chain: Chain, event: Any, from_block: int, to_block: int, argument_filters: dict | None = None
) -> list[dict]:
    """Every log of `event` (a contract event class, e.g. `distributor.events.Claimed`) in the blocks
    `from_block..to_block`, read in ranges of at most `block_span_max` blocks, in chain order."""
    logs: list[dict] = []
    for start, end in block_ranges(from_block, to_block):
        try:
            logs += event.get_logs(from_block=start, to_block=end, argument_filters=argument_filters)
        except (*node_unreachable_errors, OSError, ConnectionError) as error:
            raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    return sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))


def log_start_block(chain: Chain, distributor: Contract, from_block: int | None) -> int:
    """The first block to read the distributor's logs from: `from_block` when given, else its deployment block."""
    if from_block is not None:
        return from_block
    return deployment_block(chain, distributor.address)


def deployment_block(chain: Chain, address: str) -> int:
    """The block whose state first holds code at `address`, by binary search over `eth_getCode`.

    Needs historical state (an archive node, anvil, eth-tester). A node that has pruned it makes this a
    `ChainConfigError` asking for `--from-block`.
    """
    try:
        head = chain.w3.eth.block_number
        if not _has_code(chain, address, head):
            raise ChainConfigError(f"no contract at `{address}` on chain `{chain.chain_id}`", "distributor")
        low, high = 0, head  # code at `high`; none before `low`
        while low < high:
            middle = (low + high) // 2
            if _has_code(chain, address, middle):
                high = middle
            else:
                low = middle + 1
        return high
    except (*node_unreachable_errors, OSError, ConnectionError) as error:
        raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    except ChainConfigError:
        raise
    except Exception as error:  # a node without old state answers with an RPC error ("missing trie node", ...)
        raise ChainConfigError(
            f"cannot find the block distributor `{address}` was deployed in: the node at "
            f"`{redact_url(chain.rpc_url)}` does not answer eth_getCode for old blocks ({type(error).__name__}). "
            "Pass --from-block N (or set from_block), "
            "N being the `deployment_block` that `royalty deploy` printed, or the contract creation block a block "
            "explorer shows",
            "from_block",
        ) from None


def _has_code(chain: Chain, address: str, block: int) -> bool:
    return chain.w3.eth.get_code(address, block_identifier=block) not in (b"", None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LogIndex:
    """One log index kept in the ledger range by range (claims, registry events, token transfers).

    `cursor(connection)` is the last stored range's (to_block, to_block_hash), None before the first;
    `store(start, end, expected_to_block)` reads blocks `start..end` and appends their rows together with
    the range in one ledger transaction whose precondition refuses it unless the cursor's to_block is still
    `expected_to_block`; it returns how many rows it stored. `step` is the `Ledger.step_lock` held meanwhile.
    """

    step: str
    cursor: Callable[[duckdb.DuckDBPyConnection], tuple[int, str] | None]
    store: Callable[[int, int, int | None], int]


@dataclass(frozen=True)
class IndexRun:
    """What one `index_logs` run read: blocks `first_block..last_block` (empty when last < first)."""

    first_block: int
    last_block: int
    head_block: int
    rows_added: int


def index_logs(
    ledger: Ledger,
    chain: Chain,
    index: LogIndex,
    first_block: Callable[[], int],
    progress: Callable[[int, int], None] | None = None,
    reorganised: tuple[str, str] = ("claims", "`claims` with the chain's Claimed events"),
) -> IndexRun:
    """Store every range after the cursor up to the newest block with `chain.confirmations` confirmations.

    A first run starts at `first_block()`; a later one after the cursor, once the cursor block's hash is
    still the chain's (else `ChainReorganisedError`: a reorganisation deeper than the confirmations). Each
    range (at most `block_span_max` blocks) is read and stored holding the step lock after re-reading the
    cursor, so two runs at once never store a range twice and a run killed midway resumes after the last
    stored range. `reorganised` names what was synced and what to compare, for the reorganisation error.
    """
    cursor = ledger.recorder.read(index.cursor, f"read the {index.step} cursor")
    if cursor is None:
        start_block = first_block()
    else:
        chain_hash = block_hash(chain, cursor[0])
        if chain_hash != cursor[1]:
            raise ChainReorganisedError(cursor[0], cursor[1], chain_hash, chain.confirmations, *reorganised)
        start_block = cursor[0] + 1
    try:
        head_block = chain.w3.eth.block_number
    except (*node_unreachable_errors, OSError, ConnectionError) as error:
        raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    last_block = head_block - (chain.confirmations - 1)  # the receipt's own block counts as one
    added = 0
    start = start_block
    while start <= last_block:
        with ledger.step_lock(index.step):
            # Another run may have stored ranges while this one waited: read the cursor again, now, under the lock.
            now = ledger.recorder.read(index.cursor, f"read the {index.step} cursor")
            start = start if now is None else max(start, now[0] + 1)
            if start > last_block:
                break
            end = next(block_ranges(start, last_block))[1]
            added += index.store(start, end, None if now is None else now[0])
        if progress is not None:
            progress(end - start_block + 1, last_block - start_block + 1)
        start = end + 1
    return IndexRun(start_block, max(last_block, start_block - 1), head_block, added)


def block_hash(chain: Chain, number: int) -> str:
    """The 0x hash of block `number`, or a text saying it is missing (the chain is shorter now)."""
    try:
        return "0x" + bytes(chain.w3.eth.get_block(number)["hash"]).hex()
    except BlockNotFound:
        return "missing (the chain is shorter now)"
    except (*node_unreachable_errors, OSError, ConnectionError) as error:
        raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
