"""Errors of on-chain settlement: the chain client, `settle`, proofs and claims."""

from ledger.redact import redact, redact_url
from settlement.exceptions import SettlementError


class ChainConfigError(SettlementError):
    """A chain setting or a signing key is missing or unusable; nothing was sent."""

    transient = False

    def __init__(self, reason: str, setting: str | None = None) -> None:
        self.reason = reason = redact(reason)  # it may quote a node URL and its key
        self.setting = setting
        super().__init__(f"{reason}" + (f" (setting `{setting}`)" if setting else ""))


class ChainUnavailableError(SettlementError):
    """The JSON-RPC node did not answer; nothing was recorded, run again when it is back."""

    transient = True

    def __init__(self, rpc_url: str, reason: str) -> None:
        self.rpc_url = rpc_url = redact_url(rpc_url)  # a hosted node's URL carries its API key
        self.reason = reason = redact(reason)
        super().__init__(f"the node at `{rpc_url}` is unavailable ({reason}); check --rpc-url and run again")


class TransactionRevertedError(SettlementError):
    """A transaction (or its preflight call) reverted; `error_name` is the contract's custom error."""

    transient = False

    def __init__(self, action: str, error_name: str, error_args: tuple, tx_hash: str | None = None) -> None:
        self.action = action
        self.error_name = error_name
        self.error_args = error_args
        self.tx_hash = tx_hash
        where = f" in tx `{tx_hash}`" if tx_hash else " (preflight call; nothing was sent)"
        super().__init__(
            f"{action} reverted{where} with {error_name}{error_args}; {_advice.get(error_name, _advice_default)}"
        )


_advice_default = "see contracts/README.md for what the error means"
_advice = {
    "RoyaltyDistributorRootPending": "an earlier root is still in its timelock; run again after it "
    "becomes active (activeAtSeconds is the unix time), or have the guardian revoke it",
    "RoyaltyDistributorUnderfunded": "transfer the missing units to the distributor, then run again",
    "RoyaltyDistributorEpochNotIncreasing": "the contract already holds this or a later epoch; check that "
    "--distributor is the contract this ledger settles to",
    "AccessControlUnauthorizedAccount": "the signing key lacks the role; grant it with the admin key",
    "RoyaltyDistributorNothingToClaim": "this account has already claimed everything this root pays it",
    "RoyaltyDistributorRootNotActive": "the root is still in its timelock; claim after activeAtSeconds",
    "RoyaltyDistributorInvalidProof": "fetch a fresh proof with `royalty proof` for the active root",
    "RoyaltyDistributorNoActiveRoot": "no root is claimable yet; wait for the timelock of the first one",
    "RoyaltyDistributorGrowthTooLarge": "the root adds more than the admin's maxEpochGrowthUnits; check the "
    "epoch's payables, then have the admin raise the cap with setMaxEpochGrowthUnits if they are right",
    "RoyaltyDistributorTotalDecreasing": "the tree's total is below the contract's latest root: this ledger "
    "does not settle to this contract, or its payables were rewritten",
    "RoyaltyDistributorEpochStepTooLarge": "the epoch jumps too far past the contract's latest one; check that "
    "--distributor is the contract this ledger settles to",
    "RoyaltyDistributorRootWasRevoked": "a guardian revoked this root; find out why before settling again",
    "RoyaltyDistributorTransferMismatch": "the token delivered another amount than the transfer said "
    "(fee-on-transfer or rebasing): the distributor cannot pay with it",
    "RoyaltyDistributorNoTreasury": "the admin must set a treasury (setTreasury) that approved the distributor",
    "ERC20InsufficientAllowance": "the treasury must approve the distributor for the funding (approve)",
    "RoyaltyDistributorSweepExceedsSurplus": "only the balance above what the roots owe can be swept",
}


class FundingRefusedError(SettlementError):
    """Funding the distributor would exceed the run's cap, or the treasury cannot cover it; nothing was sent."""

    transient = False

    def __init__(self, epoch: int, reason: str) -> None:
        self.epoch = epoch
        self.reason = reason
        super().__init__(f"epoch `{epoch}`: {reason}; nothing was sent or recorded as settled")


class ChainLedgerMismatchError(SettlementError):
    """The chain and the ledger disagree about an epoch; nothing was sent or written."""

    transient = False

    def __init__(self, epoch: int, reason: str, chain_id: int, contract: str) -> None:
        self.epoch = epoch
        self.reason = reason
        self.chain_id = chain_id
        self.contract = contract
        super().__init__(
            f"epoch `{epoch}` on chain `{chain_id}` contract `{contract}`: {reason}; nothing was sent or "
            "written. Check --rpc-url and --distributor; if they are right, stop settling to this contract "
            "and investigate (docs/operations.md)"
        )


class ConfirmationTimeoutError(SettlementError):
    """A sent transaction was not mined (or confirmed) in time; it may still be; run again to resume."""

    transient = True

    def __init__(self, tx_hash: str, confirmations: int, timeout_s: int) -> None:
        self.tx_hash = tx_hash
        self.confirmations = confirmations
        self.timeout_s = timeout_s
        super().__init__(
            f"tx `{tx_hash}` did not reach {confirmations} confirmation(s) within {timeout_s} s; it is recorded "
            "as pending in the ledger: run `royalty settle` again to resume (it will not propose twice)"
        )


class TransactionDroppedError(SettlementError):
    """A sent transaction is neither mined nor pending any more (a reorganisation or a node restart dropped it)."""

    transient = True

    def __init__(self, action: str, tx_hash: str, rpc_url: str, missing_s: float) -> None:
        self.action = action
        self.tx_hash = tx_hash
        self.rpc_url = rpc_url = redact_url(rpc_url)
        self.missing_s = missing_s
        super().__init__(
            f"{action}: tx `{tx_hash}` was dropped: the node at `{rpc_url}` has neither mined nor held it for "
            f"{missing_s:g} s (a chain reorganisation removed it, or the node restarted without its pending "
            "transactions); nothing is recorded as settled: run `royalty settle` again, it sends it again with "
            "the same nonce, so at most one can ever be mined"
        )


class NoSettlementError(SettlementError):
    """There is no settled tree (or no leaf for the account) to build a proof or claim from."""

    transient = False

    def __init__(self, reason: str, account: str | None = None) -> None:
        self.reason = reason
        self.account = account
        super().__init__(reason + (f" (account `{account}`)" if account else ""))


class SettleConflictError(SettlementError):
    """Another `royalty settle` wrote the same epoch's tree or settlement meanwhile; this one wrote nothing."""

    transient = True

    def __init__(self, epoch: int, reason: str) -> None:
        self.epoch = epoch
        self.reason = reason
        super().__init__(f"epoch `{epoch}`: {reason}; nothing was written by this run, run `royalty settle` again")


class NonceGapError(SettlementError):
    """The recorded proposal's nonce is ahead of the settler account's next nonce; nothing was sent."""

    transient = False

    def __init__(self, epoch: int, tx_hash: str, intent_nonce: int, next_nonce: int, sender: str) -> None:
        self.epoch = epoch
        self.tx_hash = tx_hash
        self.intent_nonce = intent_nonce
        self.next_nonce = next_nonce
        self.sender = sender
        super().__init__(
            f"epoch `{epoch}`: the recorded proposal tx `{tx_hash}` has nonce {intent_nonce}, but the next nonce of "
            f"settler `{sender}` is {next_nonce}: transactions before it were dropped, so that proposal can still be "
            f"mined once nonces {next_nonce}..{intent_nonce - 1} are used. A replacement must reuse nonce "
            f"{intent_nonce} (one of the two can then be mined, never both), which the node cannot mine before "
            "them. Nothing was sent. Send transactions from the settler account until its next nonce is "
            f"{intent_nonce} (e.g. 0-value transfers to itself), then run `royalty settle` again (docs/operations.md)"
        )


class MerkleTreeError(SettlementError):
    """The leaves given for a payout tree, or a dumped tree, are not acceptable.

    `account` is the offending payout address (as given) when one is at fault, `index` its position in
    the input; both are `None` when the input as a whole is at fault.
    """

    transient = False

    def __init__(self, reason: str, account: object = None, index: int | None = None) -> None:
        self.reason = reason
        self.account = account
        self.index = index
        where = f"leaf {index} (account `{account}`): " if index is not None else ""
        super().__init__(f"{where}{reason}")


class ContractArtifactError(SettlementError):
    """A committed contract artifact is missing or does not have the expected shape."""

    transient = False

    def __init__(self, reason: str, contract_name: str) -> None:
        self.reason = reason
        self.contract_name = contract_name
        super().__init__(
            f"contract artifact `{contract_name}`: {reason}; run `node contracts/compile.mjs` to rebuild it"
        )


class ClaimSyncConflictError(SettlementError):
    """Another `sync-claims` stored the same block range meanwhile; this run stored nothing more."""

    transient = True

    def __init__(self, from_block: int, command: str = "sync-claims", what: str = "claims") -> None:
        self.from_block = from_block
        super().__init__(
            f"another `royalty {command}` stored the {what} from block {from_block} meanwhile; "
            "nothing was written by this run for that range: run it again"
        )


class ChainReorganisedError(SettlementError):
    """The block the previous sync ended at is no longer on the chain: claims may have been undone."""

    transient = False

    def __init__(
        self,
        block_number: int,
        stored_hash: str,
        chain_hash: str,
        confirmations: int,
        what: str = "claims",
        compare: str = "`claims` with the chain's Claimed events",
    ) -> None:
        self.block_number = block_number
        self.stored_hash = stored_hash
        self.chain_hash = chain_hash
        super().__init__(
            f"block {block_number} was {stored_hash} when {what} were last synced but is {chain_hash} now: "
            f"the chain reorganised deeper than the {confirmations} confirmation(s) waited for, so {what} "
            f"stored from that range may no longer exist. Nothing was written. Compare {compare}, "
            "and raise --confirmations (docs/operations.md)"
        )


class HolderTokenRefusedError(SettlementError):
    """The token's balances do not follow its Transfer logs (rebasing, fee-on-transfer, ...): no holder token."""

    transient = False

    def __init__(self, token: str, reason: str, start: int, end: int) -> None:
        self.token = token
        super().__init__(
            f"token `{token}` cannot be a holder token: {reason}. Holders are paid by balances computed from "
            f"Transfer logs, so a token whose balances change otherwise (rebasing, fee-on-transfer without a "
            f"Transfer of the fee) is refused; nothing was written for blocks {start}..{end}. Pay its holders "
            "some other way, or name a standard ERC-20"
        )
