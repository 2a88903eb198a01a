"""Errors of the settlement package."""

from schemas.errors import RoyaltyError


class SettlementError(RoyaltyError):
    """Base of every error the settlement package raises on purpose."""


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
