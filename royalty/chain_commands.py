"""The on-chain commands of `royalty`: deploy, settle, proof, claim, sync-claims (see `register(app)`).

Signing keys come from the environment (`ROYALTY_SETTLER_KEY`, or `ROYALTY_CLAIMER_KEY` for `claim`)
or from the encrypted `keystore` file with `ROYALTY_KEYSTORE_PASSWORD`; there is deliberately no flag
for a key, and no command prints one.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from royalty.common import (
    AcceptUnreconciledOption,
    AcceptUnverifiedOption,
    ConfigOption,
    DataPathOption,
    LakeOption,
    check_address,
    check_payout_address,
    load_settings,
    registry_rules,
    require_ledger,
    stderr,
    stdout,
    writing_ledger,
)
from royalty.common import fail as _fail
from schemas.errors import RoyaltyError

if TYPE_CHECKING:
    from royalty.config import Settings  # imported on first use (royalty.common.load_settings)

T = TypeVar("T")

RpcOption = Annotated[
    str | None,
    typer.Option("--rpc-url", help="EVM JSON-RPC URL; unset: a throwaway in-process chain. [env ROYALTY_RPC_URL]"),
]
DistributorOption = Annotated[
    str | None, typer.Option(
        "--distributor", callback=check_address, help="RoyaltyDistributor address. [env ROYALTY_DISTRIBUTOR]"
    )
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
FromBlockOption = Annotated[
    int | None,
    typer.Option(
        "--from-block",
        help="Block the distributor was deployed in (`royalty deploy` prints it); logs are read from there. "
        "Unset: found on the chain (needs a node with old state). [env ROYALTY_FROM_BLOCK]",
    ),
]

# On the throwaway in-process chain `settle` deploys its own token and mints the settler this much,
# the most a payable column can ever hold, so funding never falls short there.
embedded_mint_units = 2**63 - 1


def _print_json(value: dict[str, Any]) -> None:
    stdout.file.write(json.dumps(value) + "\n")
    stdout.file.flush()


def _chain(settings: "Settings", key_env: str | None = None):
    from settlement.onchain import connect, load_signer, settler_key_env

    signer = None
    if key_env is not None:
        signer = load_signer(settings.keystore, key_env)
    signer = signer or load_signer(settings.keystore, settler_key_env)
    return connect(settings.rpc_url, signer, settings.confirmations, settings.confirm_timeout_s)


def _check_addresses(values: list[str] | None) -> list[str] | None:
    """`check_address` for a repeatable option. A typer callback."""
    return None if values is None else [str(check_address(value)) for value in values]


def deploy(
    rpc_url: RpcOption = None,
    config: ConfigOption = None,
    timelock_seconds: Annotated[
        int,
        typer.Option(
            "--timelock-seconds",
            help="Seconds a root waits before claims (guardians may revoke); at least 3,600 off a local chain.",
        ),
    ] = 86_400,
    admin: Annotated[
        str | None,
        typer.Option("--admin", callback=check_address, help="Admin (a Safe, say); unset: the deployer (local only)."),
    ] = None,
    settler: Annotated[
        str | None,
        typer.Option("--settler", callback=check_address, help="Settler (proposes roots); unset: the deployer."),
    ] = None,
    guardian: Annotated[
        list[str] | None,
        typer.Option(
            "--guardian", callback=_check_addresses, help="Guardian address (repeatable); unset: the deployer."
        ),
    ] = None,
    treasury: Annotated[
        str | None,
        typer.Option(
            "--treasury",
            callback=check_address,
            help="Account settle pulls funding from (it must approve the distributor); unset: the deployer.",
        ),
    ] = None,
    admin_delay_seconds: Annotated[
        int, typer.Option("--admin-delay-seconds", min=0, help="Delay of the two-step admin transfer.")
    ] = 3 * 86_400,
    max_epoch_growth_units: Annotated[
        int | None,
        typer.Option(
            "--max-epoch-growth-units", min=0, help="Most one proposal may add to the total; unset: unlimited."
        ),
    ] = None,
    allow_shared_roles: Annotated[
        bool,
        typer.Option("--allow-shared-roles", help="Let one account hold several roles on a non-local test chain."),
    ] = False,
    migrate_from: Annotated[
        str | None,
        typer.Option(
            "--migrate-from",
            callback=check_address,
            help="A deployed distributor this one takes over from: leaves here count only what was earned after "
            "its last root, which stays claimable there.",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Existing 6-decimal ERC-20 to pay; unset: deploy a TestToken.")
    ] = None,
    mint_units: Annotated[
        int,
        typer.Option("--mint-units", help="TestToken units to mint to the treasury, approved if it is the deployer."),
    ] = 0,
    output_json: JsonOption = False,
) -> None:
    """Deploy the distributor (and, for local use, a TestToken) with distinct admin, settler and guardians.

    Off a local chain (anvil's 31337, the in-process chain) one account may hold only one role unless
    --allow-shared-roles, and the timelock is at least an hour.
    """
    from settlement.onchain import DeployRoles, deploy_contracts, growth_units_unlimited

    settings = load_settings({"rpc_url": rpc_url}, config)
    roles = DeployRoles(
        admin,
        settler,
        tuple(guardian or ()),
        treasury,
        admin_delay_seconds,
        growth_units_unlimited if max_epoch_growth_units is None else max_epoch_growth_units,
        allow_shared_roles,
    )
    try:
        chain = _chain(settings)
        deployed = deploy_contracts(chain, timelock_seconds, None, token, mint_units, roles, migrate_from)
    except RoyaltyError as error:
        _fail(error)
    from ledger.redact import redact_url

    result = {**vars(deployed), "rpc_url": redact_url(chain.rpc_url)}
    result["guardians"] = list(deployed.guardians)
    result["max_epoch_growth_units"] = str(deployed.max_epoch_growth_units)
    if output_json:
        _print_json(result)
        return
    names = ("token", "distributor", "admin", "settler", "guardians", "treasury", "chain_id", "deployment_block")
    for name in names:
        stdout.print(f"{name}: {result[name]}", highlight=False)
    if deployed.predecessor != "0x" + "00" * 20:
        stdout.print(f"migrated from: {deployed.predecessor}", highlight=False)
    if chain.embedded:
        stderr.print("note: the in-process chain ends with this command; pass --rpc-url to deploy for real")


def settle_command(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    rpc_url: RpcOption = None,
    distributor: DistributorOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan, build the tree, read the chain; write nothing.")
    ] = False,
    confirmations: Annotated[
        int | None, typer.Option("--confirmations", help="Blocks to wait for (the tx's own included).")
    ] = None,
    output_json: JsonOption = False,
    accept_unverified_files: AcceptUnverifiedOption = False,
    accept_unreconciled: AcceptUnreconciledOption = False,
    from_block: FromBlockOption = None,
    funding_cap_units: Annotated[
        int | None,
        typer.Option(
            "--funding-cap-units",
            min=0,
            help="Most units this run may pull from the treasury; a larger shortfall stops with the figures. "
            "[env ROYALTY_FUNDING_CAP_UNITS]",
        ),
    ] = None,
    via: Annotated[
        str,
        typer.Option(
            "--via",
            help="`key`: sign and send with the settler's key; `safe`: write the funding and the proposal as a "
            "Safe Transaction Builder batch for --safe's signers (no key needed); a later settle records it.",
        ),
    ] = "key",
    safe: Annotated[
        str | None, typer.Option("--safe", callback=check_address, help="The Safe holding SETTLER_ROLE (--via safe).")
    ] = None,
    safe_batch_dir: Annotated[
        Path | None, typer.Option("--safe-batch-dir", help="Folder for the batch JSON; unset: the tree folder.")
    ] = None,
) -> None:
    """Close the epoch if needed, write its payout tree and proofs, fund and propose the root, record it."""
    from settlement import InputChecks
    from settlement.onchain import deploy_contracts, distributor_contract
    from settlement.use_cases.settle import settle

    settings = load_settings(
        {
            "lake": lake,
            "data_path": data_path,
            "rpc_url": rpc_url,
            "distributor": distributor,
            "confirmations": confirmations,
            "from_block": from_block,
            "funding_cap_units": funding_cap_units,
        },
        config,
    )
    require_ledger(settings.lake, settings.data_path)
    tree_dir = Path(settings.tree_dir) if settings.tree_dir else None
    if tree_dir is None and "://" not in settings.lake and not settings.lake.startswith("postgres"):
        tree_dir = Path(settings.lake) / "trees"
    try:
        if via not in ("key", "safe") or (via == "safe") != (safe is not None):
            from settlement.onchain import ChainConfigError

            raise ChainConfigError("pass --via key (the default), or --via safe with --safe 0xSAFE…", "via")
        chain = _chain(settings)
        address, logs_from = settings.distributor, settings.from_block
        if address is None and chain.embedded:
            deployed = deploy_contracts(chain, 0, mint_units=embedded_mint_units)
            address, logs_from = deployed.distributor, deployed.deployment_block
            stderr.print(
                f"in-process chain: deployed a TestToken and a distributor at {address}",
                highlight=False,
                soft_wrap=True,
            )
        if address is None:
            from settlement.onchain import ChainConfigError

            raise ChainConfigError("no distributor: pass --distributor or set ROYALTY_DISTRIBUTOR", "distributor")
        contract = distributor_contract(chain, address)
        with writing_ledger(settings, "settling") as (ledger, progress):
            checks = InputChecks(accept_unverified_files, accept_unreconciled)
            result = settle(
                ledger,
                chain,
                contract,
                dry_run=dry_run,
                progress=progress,
                tree_dir=tree_dir,
                checks=checks,
                from_block=logs_from,
                funding_units_max=settings.funding_cap_units,
                rules=registry_rules(settings),
                via_safe=safe,
                safe_batch_dir=safe_batch_dir or tree_dir,
                payer_receipts=settings.payer_receipts,
            )
    except RoyaltyError as error:
        _fail(error)
    summary = {k: v for k, v in vars(result).items() if k not in ("closed",)}
    summary["closed_epoch"] = result.closed.epoch if result.closed else None
    if settings.pushgateway_url and not dry_run:
        from royalty.job_metrics import push_figures

        warning = push_figures("settle", {**summary, "total_units": result.total_units}, settings.pushgateway_url)
        if warning:
            stderr.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    summary["total_units"] = str(result.total_units)
    if output_json:
        _print_json(summary)
        return
    table = Table(title=f"settlement: {result.outcome}")
    table.add_column("field")
    table.add_column("value")
    for name, value in summary.items():
        if name != "notes" and value is not None:
            # Amounts and counts with thousands separators; ids (epoch, block, chain, snapshot) as they are.
            figure = name.endswith(("_units", "_count")) and str(value).isdigit()
            table.add_row(name, f"{int(value):,}" if figure else str(value))
    stdout.print(table)
    for note in result.notes:
        stdout.print(note, highlight=False)
    if dry_run:
        stdout.print("dry run: nothing was written or sent")


def _proof(settings: "Settings", account: str) -> dict[str, Any]:
    from ledger import Ledger
    from settlement.onchain import account_proof

    with Ledger.open_read_only(settings.lake, settings.data_path) as ledger:
        return account_proof(ledger, account, settings.distributor)


def proof(
    account: Annotated[str, typer.Option("--account", callback=check_payout_address, help="Payout address (0x…).")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    distributor: DistributorOption = None,
    output_json: JsonOption = False,
) -> None:
    """Print an account's cumulative amount and Merkle proof in the latest settled root."""
    settings = load_settings({"lake": lake, "data_path": data_path, "distributor": distributor}, config)
    try:
        found = _proof(settings, account)
    except RoyaltyError as error:
        _fail(error)
    if output_json:
        _print_json(found)
        return
    for name in ("account", "cumulative_amount", "epoch", "root", "distributor", "chain_id"):
        stdout.print(f"{name}: {found[name]}", highlight=False)
    stdout.print("proof:", highlight=False)
    for node in found["proof"]:
        stdout.print(f"  {node}", highlight=False)


def claim(
    proof_file: Annotated[
        Path | None, typer.Option("--proof-file", help="JSON written by `royalty proof --json` ('-': stdin).")
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", callback=check_payout_address, help="Payout address, with --lake.")
    ] = None,
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    rpc_url: RpcOption = None,
    distributor: DistributorOption = None,
    output_json: JsonOption = False,
) -> None:
    """Submit a claim: pays the account its cumulative amount minus what it already claimed.

    Proves against the distributor's active root (while the latest root waits out its timelock, the one
    before it), taking the account's proof in it from the ledger with --account. Signed with
    ROYALTY_CLAIMER_KEY only, never the settler's key; anyone may submit it, the tokens always go to the account.
    """
    import sys

    from settlement.onchain import (
        NoSettlementError,
        claimer_signer,
        connect,
        distributor_contract,
        proof_for_active_root,
        proof_in_root,
        token_contract,
        transact,
    )

    settings = load_settings(
        {"lake": lake, "data_path": data_path, "rpc_url": rpc_url, "distributor": distributor}, config
    )
    try:
        if proof_file is not None:
            text = sys.stdin.read() if str(proof_file) == "-" else proof_file.read_text(encoding="utf-8")
            found = json.loads(text)
        elif account is not None:
            found = _proof(settings, account)
        else:
            raise NoSettlementError("pass --proof-file (from `royalty proof --json`) or --account with --lake")
        address = settings.distributor or found.get("distributor")
        if not address:
            raise NoSettlementError("the proof names no distributor: pass --distributor")
        signer = claimer_signer(embedded=settings.rpc_url is None)
        chain = connect(settings.rpc_url, signer, settings.confirmations, settings.confirm_timeout_s)
        if found.get("chain_id") is not None and int(found["chain_id"]) != chain.chain_id:
            raise NoSettlementError(
                f"the proof is for chain {found['chain_id']} but --rpc-url is chain {chain.chain_id}"
            )
        contract = distributor_contract(chain, address)

        def lookup(root: str) -> dict[str, Any] | None:
            from ledger import Ledger

            with Ledger.open_read_only(settings.lake, settings.data_path) as ledger:
                return proof_in_root(ledger, found["account"], root)

        found = proof_for_active_root(contract, found, lookup if proof_file is None else None)
        token = token_contract(chain, contract)
        before_units = token.functions.balanceOf(found["account"]).call()
        call = contract.functions.claim(
            found["account"], int(found["cumulative_amount"]), [bytes.fromhex(p[2:]) for p in found["proof"]]
        )
        receipt = transact(chain, call, f"claim for {found['account']}")
        paid_units = token.functions.balanceOf(found["account"]).call() - before_units
    except RoyaltyError as error:
        _fail(error)
    except (OSError, ValueError, KeyError) as error:
        _fail(RoyaltyError(f"cannot read the proof: {error}; pass the output of `royalty proof --json`"))
    result = {
        "account": found["account"],
        "paid_units": str(paid_units),
        "cumulative_amount": found["cumulative_amount"],
        "tx_hash": "0x" + bytes(receipt["transactionHash"]).hex(),
        "block_number": receipt["blockNumber"],
    }
    if output_json:
        _print_json(result)
    else:
        stdout.print(f"claimed {paid_units:,} units for {found['account']} in tx {result['tx_hash']}", highlight=False)


def sync_claims_command(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    rpc_url: RpcOption = None,
    distributor: DistributorOption = None,
    confirmations: Annotated[
        int | None, typer.Option("--confirmations", help="Blocks a claim must have (its own included).")
    ] = None,
    output_json: JsonOption = False,
    from_block: FromBlockOption = None,
) -> None:
    """Read the distributor's Claimed events into the ledger (the `claims` view); needs no key.

    Reads from where the previous run stopped; a rerun never stores a claim twice.
    """
    from settlement.onchain import distributor_contract, recorded_distributor
    from settlement.use_cases.sync_claims import sync_claims

    settings = load_settings(
        {
            "lake": lake,
            "data_path": data_path,
            "rpc_url": rpc_url,
            "distributor": distributor,
            "confirmations": confirmations,
            "from_block": from_block,
        },
        config,
    )
    result = sync_from_chain(
        settings,
        "claims",
        "Claimed events",
        lambda ledger, chain: distributor_contract(
            chain, settings.distributor or recorded_distributor(ledger, chain.chain_id)
        ),
        sync_claims,
        settings.from_block,
    )
    if output_json:
        _print_json({**vars(result), "claimed_units_added": str(result.claimed_units_added)})
        return
    stdout.print(
        f"stored {result.claims_added} claim(s) paying {result.claimed_units_added:,} units from blocks "
        f"{result.from_block}..{result.to_block} of chain {result.chain_id} (head {result.head_block}), "
        f"distributor {result.contract}",
        highlight=False,
        soft_wrap=True,
    )


def sync_holders_command(
    token: Annotated[str, typer.Option("--token", callback=check_address, help="The ERC-20 whose holders are paid.")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    rpc_url: RpcOption = None,
    confirmations: Annotated[
        int | None, typer.Option("--confirmations", help="Blocks a transfer must have (its own included).")
    ] = None,
    from_block: Annotated[
        int | None,
        typer.Option(
            "--from-block",
            help="Block the token was deployed in; its Transfer logs are read from there (every one is needed). "
            "Unset: found on the chain (needs a node with old state).",
        ),
    ] = None,
    output_json: JsonOption = False,
) -> None:
    """Index a token's Transfer logs into the ledger (`holder_balances`), for `holders:<token>` recipients.

    Reads from where the previous run stopped; a rerun never stores a transfer twice. Each range is checked
    against the token's balanceOf for a sample of holders: a rebasing or fee-on-transfer token is refused.
    """
    from settlement.use_cases.sync_holders import holder_token_contract, sync_holders

    settings = load_settings(
        {"lake": lake, "data_path": data_path, "rpc_url": rpc_url, "confirmations": confirmations}, config
    )
    result = sync_from_chain(
        settings,
        "token transfers",
        "Transfer events",
        lambda _, chain: holder_token_contract(chain, token),
        sync_holders,
        from_block,
    )
    if output_json:
        _print_json(vars(result))
        return
    stdout.print(
        f"stored {result.transfers_added} transfer(s) of token {result.token} from blocks "
        f"{result.from_block}..{result.to_block} of chain {result.chain_id} (head {result.head_block})",
        highlight=False,
        soft_wrap=True,
    )


def sync_from_chain(
    settings: "Settings",
    what: str,
    events: str,
    contract_of: Callable[[Any, Any], Any],
    sync: Callable[..., T],
    from_block: int | None,
) -> T:
    """The body of a `sync-*` command: on the ledger (which must exist) and a read-only chain client, `sync(ledger,
    chain, contract_of(ledger, chain), progress, from_block=...)` with a progress bar of the `events` read; a
    `RoyaltyError` ends the command. `what` names what is read, for the refusal without `--rpc-url`."""
    from settlement.onchain import ChainConfigError, connect

    require_ledger(settings.lake, settings.data_path)
    label = f"reading {events}"
    try:
        if settings.rpc_url is None:
            raise ChainConfigError(f"{what} are read from a live chain: pass --rpc-url", "rpc_url")
        with writing_ledger(settings, label) as (ledger, progress):
            chain = connect(settings.rpc_url, None, settings.confirmations, settings.confirm_timeout_s)
            contract = contract_of(ledger, chain)
            return sync(
                ledger, chain, contract, lambda done, total: progress(label, done, total), from_block=from_block
            )
    except RoyaltyError as error:
        _fail(error)


def register(app: typer.Typer) -> None:
    """Add `deploy`, `settle`, `proof`, `claim`, `sync-claims` and `sync-holders` to the `royalty` app."""
    app.command("deploy")(deploy)
    app.command("settle")(settle_command)
    app.command("proof")(proof)
    app.command("claim")(claim)
    app.command("sync-claims")(sync_claims_command)
    app.command("sync-holders")(sync_holders_command)
