"""The web3.py chain client of settlement: connect, sign locally, send, wait for confirmations.

A JSON-RPC node when a URL is given, else web3's in-process `EthereumTesterProvider` (eth-tester with
py-evm): a throwaway chain that lives as long as the process, for a newcomer's first run.

Keys are read from the environment (`ROYALTY_SETTLER_KEY`, hex) or from an encrypted keystore file
(the `keystore` setting) whose password is in `ROYALTY_KEYSTORE_PASSWORD`; never from a flag, and
neither the key nor the password is ever logged or put in an error message. Transactions are signed
here, so their hash is known before they are sent and can be recorded first (see `settle.py`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    ProviderConnectionError,
    TransactionNotFound,
)

from ledger.redact import redact_url
from schemas.errors import require
from settlement.onchain.contract_artifacts import distributor_artifact, registry_artifact, token_artifact
from settlement.onchain.exceptions import (
    ChainConfigError,
    ChainUnavailableError,
    ConfirmationTimeoutError,
    TransactionDroppedError,
    TransactionRevertedError,
)

log = logging.getLogger(__name__)

settler_key_env = "ROYALTY_SETTLER_KEY"
claimer_key_env = "ROYALTY_CLAIMER_KEY"
keystore_password_env = "ROYALTY_KEYSTORE_PASSWORD"
# eth-tester's first funded account has private key 1: public knowledge, usable only on that
# throwaway in-process chain, where it saves the newcomer from configuring a key.
embedded_key = (1).to_bytes(32, "big")
embedded_url = "embedded:eth-tester"
embedded_install_command = "pip install -e '.[embedded]'"
embedded_packages = {"eth_tester": "eth-tester", "eth": "py-evm"}  # module -> the package that provides it

# Polling cadence while waiting for a receipt or for confirmations: fast enough for anvil's
# instant blocks, slow enough not to hammer a public node (12 s blocks).
poll_s = 0.1
# A receipt or its confirmations arrive within minutes on any live chain; past this the operator
# must look (a stuck low-fee tx), and a rerun resumes from the recorded hash.
confirm_timeout_s_default = 600
rpc_timeout_s = 60
# A sent transaction that the node neither mined nor holds for this long was dropped: a reorganisation
# removed it, or the node restarted without its pool. Long enough for a load-balanced RPC's backends to
# see a fresh transaction, short enough not to wait out the whole confirmation timeout for nothing.
dropped_after_s = 10.0
# What web3's HTTP provider raises while the node is down or restarting.
node_unreachable_errors: tuple[type[Exception], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ProviderConnectionError,
)
token_decimals = 6  # payables are micros: one token unit per micro


@dataclass
class Chain:
    """A connected chain, with the local signer transactions are sent from (if any)."""

    w3: Web3
    chain_id: int
    rpc_url: str = field(repr=False)  # may carry an API key: print `redact_url(rpc_url)`
    signer: LocalAccount | None
    confirmations: int = 1
    confirm_timeout_s: int = confirm_timeout_s_default

    @property
    def embedded(self) -> bool:
        return self.rpc_url == embedded_url

    @property
    def sender(self) -> str:
        if self.signer is None:
            raise ChainConfigError(
                f"no signing key: set {settler_key_env} (hex private key) or the `keystore` setting with "
                f"{keystore_password_env}",
                "keystore",
            )
        return self.signer.address


def load_signer(
    keystore: str | None, key_env: str = settler_key_env, environ: Mapping[str, str] | None = None
) -> LocalAccount | None:
    """The account in env `key_env`, else in the encrypted `keystore` file; None when neither is set."""
    environ = os.environ if environ is None else environ
    key = environ.get(key_env, "").strip()
    if key:
        try:
            return Account.from_key(key)
        except (ValueError, TypeError):
            # The exception text may quote the key; say only which variable is wrong.
            raise ChainConfigError(f"{key_env} is not a 32-byte hex private key", key_env) from None
    if not keystore:
        return None
    path = Path(keystore)
    password = environ.get(keystore_password_env)
    if password is None:
        raise ChainConfigError(f"keystore `{path}` needs its password in {keystore_password_env}", "keystore")
    try:
        encrypted = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ChainConfigError(f"cannot read keystore `{path}`: {error.strerror}", "keystore") from None
    try:
        return Account.from_key(Account.decrypt(encrypted, password))
    except (ValueError, TypeError, KeyError):
        raise ChainConfigError(
            f"cannot decrypt keystore `{path}`: wrong {keystore_password_env} or not a keystore file", "keystore"
        ) from None


def require_embedded_chain() -> None:
    """Refuse (exit 2, naming the install command) when the in-process chain's packages are not installed.

    eth-tester and py-evm come with the `embedded` extra only: an operator who always passes --rpc-url
    does not install a beta EVM.
    """
    try:
        import eth.vm  # noqa: F401
        import eth_tester  # noqa: F401
    except ImportError as error:
        module = (error.name or "eth_tester").split(".")[0]
        package = embedded_packages.get(module, module)
        raise ChainConfigError(
            f"without --rpc-url this command runs an in-process chain, which needs the `embedded` extra "
            f"(`{package}` is not installed): install it with `{embedded_install_command}` "
            "(from a release: `pip install 'royalty-engine[embedded]'`), or pass --rpc-url",
            "rpc_url",
        ) from None


def connect(
    rpc_url: str | None,
    signer: LocalAccount | None,
    confirmations: int = 1,
    confirm_timeout_s: int = confirm_timeout_s_default,
) -> Chain:
    """Connect to `rpc_url`, or to a fresh in-process chain when it is None (signer defaults to its key)."""
    if confirmations < 1:
        raise ChainConfigError(f"confirmations must be at least 1 (the receipt's block), not {confirmations}")
    if rpc_url is None:
        require_embedded_chain()
        from web3 import EthereumTesterProvider

        w3 = Web3(EthereumTesterProvider())
        signer = signer or Account.from_key(embedded_key)
        url = embedded_url
    else:
        redact_url(rpc_url)  # remembers its key, so a library's message quoting the URL is masked too
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": rpc_timeout_s}))
        url = rpc_url
    try:
        chain_id = w3.eth.chain_id
    except Exception as error:
        raise ChainUnavailableError(url, type(error).__name__) from None
    return Chain(w3, chain_id, url, signer, confirmations, confirm_timeout_s)


def deployed_contract(chain: Chain, address: str, abi: list, setting: str, deploy_hint: str = "") -> Contract:
    """The contract with `abi` at `address`, after checking that it is an address and that code is deployed there.

    A refusal is a `ChainConfigError` naming `setting` (the option or setting that gave the address), followed by
    `deploy_hint` when there is no code; a node out of reach is `ChainUnavailableError`.
    """
    if not Web3.is_address(address):
        raise ChainConfigError(f"`{address}` is not an address", setting)
    checksummed = Web3.to_checksum_address(address)
    try:
        code = chain.w3.eth.get_code(checksummed)
    except (*node_unreachable_errors, OSError, ConnectionError) as error:
        raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    if code in (b"", None):
        raise ChainConfigError(f"no contract at `{checksummed}` on chain `{chain.chain_id}`{deploy_hint}", setting)
    return chain.w3.eth.contract(address=checksummed, abi=abi)


def distributor_contract(chain: Chain, address: str) -> Contract:
    """The RoyaltyDistributor at `address`, after checking that code is deployed there."""
    hint = "; deploy one with `royalty deploy`"
    return deployed_contract(chain, address, distributor_artifact().abi, "distributor", hint)


def token_contract(chain: Chain, distributor: Contract) -> Contract:
    """The ERC-20 the distributor pays, after checking it counts in micros (6 decimals)."""
    address = distributor.functions.token().call()
    token = chain.w3.eth.contract(address=address, abi=token_artifact().abi)
    decimals = token.functions.decimals().call()
    if decimals != token_decimals:
        raise ChainConfigError(
            f"token `{address}` has {decimals} decimals; payables are micros, so it must have {token_decimals}",
            "distributor",
        )
    return token


# --- sending -------------------------------------------------------------------------------------


def _error_selectors() -> dict[bytes, tuple[str, list[str]]]:
    selectors = {}
    for artifact in (distributor_artifact(), token_artifact(), registry_artifact()):
        for entry in artifact.abi:
            if entry["type"] == "error":
                types = [item["type"] for item in entry["inputs"]]
                signature = f"{entry['name']}({','.join(types)})"
                selectors[keccak(text=signature)[:4]] = (entry["name"], types)
    return selectors


def decode_revert(data: Any) -> tuple[str, tuple]:
    """The custom error's name and arguments from revert data (hex or bytes), or a generic name."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data or b"")
    found = _error_selectors().get(raw[:4])
    if found is None:
        return "UnknownRevert", ("0x" + raw.hex(),)
    name, types = found
    try:
        return name, tuple(abi_decode(types, raw[4:]))
    except Exception:
        return name, ()


def _revert_of(error: Exception) -> tuple[str, tuple]:
    if isinstance(error, ContractCustomError):
        return decode_revert(error.data)
    if isinstance(error, ContractPanicError | ContractLogicError):
        return ("Revert", (str(error.message or error),))
    return (type(error).__name__, ())


def preflight(chain: Chain, call: Any, action: str) -> None:
    """Simulate `call` from the sender; raise `TransactionRevertedError` with the decoded custom error."""
    try:
        # estimate_gas runs the call on the node like eth_call, and works for constructors too.
        call.estimate_gas({"from": chain.sender})
    except (ContractCustomError, ContractLogicError, ContractPanicError) as error:
        raise TransactionRevertedError(action, *_revert_of(error)) from None


@dataclass(frozen=True)
class SignedTx:
    """A transaction signed locally: its hash and nonce are known before it is sent."""

    tx_hash: str
    nonce: int
    raw: bytes


def sign(chain: Chain, call: Any, nonce: int | None = None) -> SignedTx:
    """Build and sign `call` from the sender with `nonce` (default: the next one, counting pending txs)."""
    sender = chain.sender
    if nonce is None:
        nonce = chain.w3.eth.get_transaction_count(sender, "pending")
    tx = call.build_transaction({"from": sender, "nonce": nonce, "chainId": chain.chain_id})
    signed = chain.signer.sign_transaction(tx)  # type: ignore[union-attr]
    return SignedTx("0x" + bytes(signed.hash).hex(), nonce, bytes(signed.raw_transaction))


def broadcast(chain: Chain, signed: SignedTx) -> None:
    """Send a signed transaction; a node that already knows it is not an error."""
    try:
        chain.w3.eth.send_raw_transaction(signed.raw)
    except Exception as error:
        text = str(error).lower()
        if "already known" in text or "already imported" in text:
            return
        raise
    log.info("sent transaction", extra={"tx_hash": signed.tx_hash, "nonce": signed.nonce})


def _receipt(chain: Chain, tx_hash: str) -> Any:
    try:
        return chain.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return None


def _in_pool(chain: Chain, tx_hash: str) -> bool:
    try:
        return chain.w3.eth.get_transaction(tx_hash) is not None  # type: ignore[arg-type]
    except TransactionNotFound:
        return False


def wait_confirmed(chain: Chain, tx_hash: str, action: str) -> dict:
    """Wait for the receipt and `chain.confirmations` blocks on top of it (the receipt's block counts).

    A node that is down or restarting is polled again until the timeout. Raises
    `TransactionRevertedError` if the tx reverted, `TransactionDroppedError` once the node has neither
    mined nor held it for `dropped_after_s` (a reorganisation or a restart dropped it),
    `ChainUnavailableError` if the node is still unreachable at the timeout, and
    `ConfirmationTimeoutError` past the timeout otherwise.
    """
    deadline = time.monotonic() + chain.confirm_timeout_s
    receipt = None
    missing_since: float | None = None
    unreachable: str | None = None
    while time.monotonic() < deadline:
        try:
            receipt = _receipt(chain, tx_hash)
            if receipt is not None:
                missing_since = None
                depth = chain.w3.eth.block_number - receipt["blockNumber"] + 1
                if depth >= chain.confirmations:
                    # A reorg during the wait can move the tx; trust only the receipt seen after the depth.
                    again = _receipt(chain, tx_hash)
                    if again is not None and again["blockHash"] == receipt["blockHash"]:
                        unreachable = None
                        break
            elif _in_pool(chain, tx_hash):
                missing_since = None
            else:
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since >= dropped_after_s:
                    raise TransactionDroppedError(action, tx_hash, chain.rpc_url, dropped_after_s)
            unreachable = None
        except node_unreachable_errors as error:
            if unreachable is None:
                log.warning("node unreachable, retrying", extra={"tx_hash": tx_hash, "error": type(error).__name__})
            unreachable, receipt, missing_since = type(error).__name__, None, None
        time.sleep(poll_s)
    else:
        if unreachable is not None:
            raise ChainUnavailableError(
                chain.rpc_url,
                f"{unreachable} for {chain.confirm_timeout_s} s while waiting for tx `{tx_hash}`; a rerun looks for it "
                "on the chain before sending anything again",
            )
        raise ConfirmationTimeoutError(tx_hash, chain.confirmations, chain.confirm_timeout_s)
    require(receipt is not None, f"{action}: a confirmed tx `{tx_hash}` has a receipt")
    if receipt["status"] != 1:
        raise TransactionRevertedError(action, "Reverted", (), tx_hash)
    return dict(receipt)


def transact(chain: Chain, call: Any, action: str) -> dict:
    """Preflight, sign, send and wait for `call`: for transactions that need no recorded intent."""
    preflight(chain, call, action)
    signed = sign(chain, call)
    broadcast(chain, signed)
    return wait_confirmed(chain, signed.tx_hash, action)


def wait_no_pending(chain: Chain) -> None:
    """Wait until none of the sender's transactions is pending (e.g. a funding transfer of a killed run)."""
    deadline = time.monotonic() + chain.confirm_timeout_s
    while chain.w3.eth.get_transaction_count(chain.sender, "pending") > chain.w3.eth.get_transaction_count(
        chain.sender, "latest"
    ):
        if time.monotonic() > deadline:
            raise ConfirmationTimeoutError(f"pending transactions of {chain.sender}", 1, chain.confirm_timeout_s)
        time.sleep(poll_s)


# --- deployment ----------------------------------------------------------------------------------


# Chains where one key may hold every role: anvil's/hardhat's id and the in-process chain's (eth-tester).
local_chain_ids = frozenset({31337, 131277322940537})
# The default delay of a two-step admin transfer (`beginDefaultAdminTransfer`, then accept after it).
admin_delay_seconds_default = 3 * 86_400
# The contract's own floor off local chains (`TIMELOCK_SECONDS_MIN`): time for a guardian to revoke.
timelock_seconds_min = 3_600
growth_units_unlimited = 2**128 - 1
zero_address = "0x" + "00" * 20
# The most units sent to the new distributor to check that a transfer delivers what it says (one token at 6
# decimals: enough for a percentage fee to show; a sweepable surplus).
token_probe_units = 1_000_000


@dataclass(frozen=True)
class DeployedContracts:
    token: str
    distributor: str
    admin: str
    guardian: str
    chain_id: int
    # The distributor's creation block: `settle` and `sync-claims` read its logs from there (`from_block`).
    deployment_block: int
    settler: str = ""
    guardians: tuple[str, ...] = ()
    treasury: str = ""
    max_epoch_growth_units: int = growth_units_unlimited
    predecessor: str = zero_address


@dataclass(frozen=True)
class DeployRoles:
    """Who holds what on a new distributor; unset: the deployer (allowed only on a local chain)."""

    admin: str | None = None
    settler: str | None = None
    guardians: tuple[str, ...] = ()
    treasury: str | None = None
    admin_delay_seconds: int = admin_delay_seconds_default
    max_epoch_growth_units: int = growth_units_unlimited
    allow_shared_roles: bool = False


def _checksummed(address: str, flag: str) -> str:
    if not Web3.is_address(address):
        raise ChainConfigError(f"{flag} `{address}` is not an address", flag.lstrip("-"))
    return Web3.to_checksum_address(address)


def resolve_roles(chain: Chain, roles: DeployRoles, timelock_seconds: int) -> DeployRoles:
    """Fill unset roles with the deployer and refuse shared roles or a short timelock off a local chain.

    On a chain other than anvil's (31337) or the in-process one, admin, settler and every guardian must be
    distinct accounts (one stolen key must not hold two roles) unless `allow_shared_roles` (test chains).
    """
    sender = chain.sender
    admin = _checksummed(roles.admin, "--admin") if roles.admin else sender
    settler = _checksummed(roles.settler, "--settler") if roles.settler else sender
    guardians = tuple(_checksummed(g, "--guardian") for g in roles.guardians) or (sender,)
    treasury = _checksummed(roles.treasury, "--treasury") if roles.treasury else sender
    local = chain.chain_id in local_chain_ids
    holders = [admin, settler, *guardians]
    if not local and not roles.allow_shared_roles and len(set(holders)) < len(holders):
        raise ChainConfigError(
            f"on chain {chain.chain_id} the admin ({admin}), the settler ({settler}) and the guardians "
            f"({', '.join(guardians)}) must be distinct accounts: pass --admin, --settler and --guardian "
            "(repeatable), or --allow-shared-roles on a test chain",
            "roles",
        )
    if not local and timelock_seconds < timelock_seconds_min:
        raise ChainConfigError(
            f"--timelock-seconds {timelock_seconds} is below the minimum {timelock_seconds_min} off a local chain "
            "(chain id 31337 or the in-process chain): a guardian needs time to revoke a bad root",
            "timelock_seconds",
        )
    return DeployRoles(
        admin, settler, guardians, treasury, roles.admin_delay_seconds, roles.max_epoch_growth_units, True
    )


def deploy_contracts(
    chain: Chain,
    timelock_seconds: int,
    guardian: str | None = None,
    token: str | None = None,
    mint_units: int = 0,
    roles: DeployRoles | None = None,
    predecessor: str | None = None,
) -> DeployedContracts:
    """Deploy a TestToken (unless `token` is given) and a distributor with `roles` (unset ones: the sender).

    `mint_units` TestToken units go to the treasury, and when the sender is the treasury it approves the
    distributor for them, to fund settlements on a local chain. An existing `token` must have 6 decimals
    and deliver what a transfer says (probed with `token_probe_units` sent to the new distributor when the
    sender holds any; a surplus the admin may sweep). `predecessor`: a distributor this one takes over
    from (`royalty deploy --migrate-from`).
    """
    roles = roles or DeployRoles(guardians=(guardian,) if guardian else ())
    roles = resolve_roles(chain, roles, timelock_seconds)
    sender = chain.sender
    w3 = chain.w3
    given_token = token is not None
    if predecessor:
        token = _predecessor_token(chain, predecessor, token)
    if token is None:
        token = _deploy_test_token(chain)
    token = _checksummed(token, "--token")
    token_handle = w3.eth.contract(address=token, abi=token_artifact().abi)
    _check_decimals(token_handle)
    build = distributor_artifact()
    factory = w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    old = _checksummed(predecessor, "--migrate-from") if predecessor else zero_address
    args = (
        token,
        timelock_seconds,
        roles.admin_delay_seconds,
        roles.admin,
        roles.settler,
        list(roles.guardians),
        roles.treasury,
        roles.max_epoch_growth_units,
        old,
    )
    receipt = transact(chain, factory.constructor(*args), "deploy RoyaltyDistributor")
    distributor = receipt["contractAddress"]
    if mint_units:
        minted = w3.eth.contract(address=token, abi=token_artifact().abi)
        transact(chain, minted.functions.mint(roles.treasury, mint_units), "mint TestToken")
        if roles.treasury == sender:
            transact(chain, minted.functions.approve(distributor, mint_units), "approve the distributor")
    if given_token:  # our own TestToken is known to deliver what it says
        probe_transfer(chain, token_handle, distributor)
    return DeployedContracts(
        token,
        distributor,
        str(roles.admin),
        roles.guardians[0],
        chain.chain_id,
        int(receipt["blockNumber"]),
        str(roles.settler),
        roles.guardians,
        str(roles.treasury),
        roles.max_epoch_growth_units,
        old,
    )


def _predecessor_token(chain: Chain, predecessor: str, token: str | None) -> str:
    """The token a migrated distributor pays: its predecessor's (its leaves are net of what the old one owes in
    it); another `--token` is refused."""
    old_token = Web3.to_checksum_address(distributor_contract(chain, predecessor).functions.token().call())
    if token is not None and _checksummed(token, "--token") != old_token:
        raise ChainConfigError(
            f"--token {token} is not {old_token}, the token {predecessor} pays: a distributor that takes over "
            "pays the same token (leave --token out to use it)",
            "token",
        )
    return old_token


def _deploy_test_token(chain: Chain) -> str:
    build = token_artifact()
    factory = chain.w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    call = factory.constructor("Test USD", "TUSD", token_decimals, chain.sender)
    return str(transact(chain, call, "deploy TestToken")["contractAddress"])


def _check_decimals(token: Contract) -> None:
    try:
        decimals = token.functions.decimals().call()
    except Exception as error:
        raise ChainConfigError(
            f"token `{token.address}` does not answer decimals() ({type(error).__name__}): not an ERC-20", "token"
        ) from None
    if decimals != token_decimals:
        raise ChainConfigError(
            f"token `{token.address}` has {decimals} decimals; payables are micros, so it must have {token_decimals}",
            "token",
        )


def probe_transfer(chain: Chain, token: Contract, to: str) -> bool:
    """Send up to `token_probe_units` from the sender to `to` and check they arrive; False if the sender holds none.

    Raises `ChainConfigError` for a token whose transfer delivers another amount (a fee-on-transfer or
    rebasing token), which would break the distributor's accounting.
    """
    probe_units = min(token_probe_units, token.functions.balanceOf(chain.sender).call())
    if probe_units == 0:
        log.warning("token transfer not probed: the deployer holds none", extra={"token": token.address})
        return False
    before = token.functions.balanceOf(to).call()
    transact(chain, token.functions.transfer(to, probe_units), "probe a token transfer")
    received = token.functions.balanceOf(to).call() - before
    if received != probe_units:
        raise ChainConfigError(
            f"token `{token.address}`: a transfer of {probe_units} unit(s) delivered {received}; a "
            "fee-on-transfer or rebasing token breaks the distributor's accounting: pay with a plain ERC-20",
            "token",
        )
    return True
