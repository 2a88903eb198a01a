"""The on-chain registry commands: `deploy-registry`, `registry register-model | register-dataset | set-policy |
set-payout`, and `sync-registry` (see `register(app)`).

Transactions are signed with the key from the environment (`ROYALTY_SETTLER_KEY`) or the encrypted `keystore`
file with `ROYALTY_KEYSTORE_PASSWORD`, as `settle` signs; there is no flag for a key. Without --rpc-url the
commands run on a throwaway in-process chain (useful only to try them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from royalty.chain_commands import FromBlockOption, JsonOption, RpcOption, _chain, _print_json, sync_from_chain
from royalty.common import (
    ConfigOption,
    DataPathOption,
    LakeOption,
    check_payout_address,
    load_settings,
    stdout,
)
from royalty.common import fail as _fail
from schemas.errors import RoyaltyError

if TYPE_CHECKING:
    from royalty.config import Settings  # imported on first use (royalty.common.load_settings)

RegistryOption = Annotated[
    str | None, typer.Option("--registry", help="ModelRegistry address. [env ROYALTY_REGISTRY]")
]
GovernorOption = Annotated[
    str | None,
    typer.Option("--governor", help="Who sets the split: an EOA, a Safe, or a TimelockController; unset: the signer."),
]
ShareOption = Annotated[
    list[str],
    typer.Option(
        "--share",
        help="RECIPIENT=PPM, repeated: an address, `model:<parent id>` or `dataset:<id>`; they sum to 1,000,000.",
    ),
]

registry_app = typer.Typer(help="Write to the on-chain ModelRegistry (signed with the key from the environment).")


def _pairs(values: list[str], what: str) -> dict[str, int]:
    """`NAME=PPM` flags as a dict; refuses a malformed or repeated one."""
    pairs: dict[str, int] = {}
    for value in values:
        name, sep, ppm = value.rpartition("=")
        if not sep or not name or not ppm.isdigit() or name in pairs:
            raise typer.BadParameter(f"`{value}` is not NAME=PPM (a name given once, an integer ppm)", param_hint=what)
        pairs[name] = int(ppm)
    return pairs


def _registry(settings: Settings, chain):
    from settlement.onchain import ChainConfigError, registry_contract

    if settings.registry is None:
        raise ChainConfigError("no registry: pass --registry (printed by `royalty deploy-registry`)", "registry")
    return registry_contract(chain, settings.registry)


def onchain_registry(settings: Settings) -> str | None:
    """The registry contract an epoch settles with in on-chain mode; None in operator mode."""
    from settlement.onchain import ChainConfigError

    if settings.registry_mode != "onchain":
        return None
    if settings.registry is None:
        raise ChainConfigError(
            "registry_mode is onchain but no registry is set: set `registry` (ROYALTY_REGISTRY) to the ModelRegistry "
            "address `royalty deploy-registry` printed",
            "registry",
        )
    return settings.registry


def _report(result, output_json: bool) -> None:
    if output_json:
        _print_json(vars(result))
    else:
        stdout.print(f"{result.action}: tx {result.tx_hash} in block {result.block_number}", highlight=False)


def deploy_registry(rpc_url: RpcOption = None, config: ConfigOption = None, output_json: JsonOption = False) -> None:
    """Deploy a ModelRegistry (no admin: nobody owns it); prints its address and deployment block."""
    from settlement.onchain import deploy_registry as deploy

    settings = load_settings({"rpc_url": rpc_url}, config)
    try:
        deployed = deploy(_chain(settings))
    except RoyaltyError as error:
        _fail(error)
    if output_json:
        _print_json(vars(deployed))
        return
    for name in ("registry", "chain_id", "deployment_block"):
        stdout.print(f"{name}: {getattr(deployed, name)}", highlight=False)


@registry_app.command("register-model")
def register_model_command(
    model_id: Annotated[str, typer.Argument(help="Model id: an identifier of at most 32 ASCII characters.")],
    parent: Annotated[list[str], typer.Option("--parent", help="PARENT_ID=PPM, repeated: the immutable lineage.")] = [],  # noqa: B006
    governor: GovernorOption = None,
    min_derivative_share_ppm: Annotated[
        int, typer.Option("--min-derivative-share-ppm", help="Least share a derivative must give this model.")
    ] = 0,
    weights_digest: Annotated[str | None, typer.Option("--weights-digest", help="32-byte hex digest.")] = None,
    weights_uri: Annotated[str, typer.Option("--weights-uri", help="Where the weights are.")] = "",
    rpc_url: RpcOption = None,
    registry: RegistryOption = None,
    config: ConfigOption = None,
    output_json: JsonOption = False,
) -> None:
    """Register a model, owned by the signer, with its lineage, weights and governor."""
    from settlement.onchain import register_model

    settings = load_settings({"rpc_url": rpc_url, "registry": registry}, config)
    parents = _pairs(parent, "--parent")
    try:
        chain = _chain(settings)
        result = register_model(
            chain,
            _registry(settings, chain),
            model_id,
            parents,
            governor,
            min_derivative_share_ppm,
            weights_digest,
            weights_uri,
        )
    except RoyaltyError as error:
        _fail(error)
    _report(result, output_json)


@registry_app.command("register-dataset")
def register_dataset_command(
    dataset_id: Annotated[str, typer.Argument(help="Dataset id: an identifier of at most 32 ASCII characters.")],
    governor: GovernorOption = None,
    content_digest: Annotated[str | None, typer.Option("--content-digest", help="32-byte hex digest.")] = None,
    content_uri: Annotated[str, typer.Option("--content-uri", help="Where the content is.")] = "",
    rpc_url: RpcOption = None,
    registry: RegistryOption = None,
    config: ConfigOption = None,
    output_json: JsonOption = False,
) -> None:
    """Register a dataset, owned by the signer, with its content and governor."""
    from settlement.onchain import register_dataset

    settings = load_settings({"rpc_url": rpc_url, "registry": registry}, config)
    try:
        chain = _chain(settings)
        result = register_dataset(chain, _registry(settings, chain), dataset_id, governor, content_digest, content_uri)
    except RoyaltyError as error:
        _fail(error)
    _report(result, output_json)


@registry_app.command("set-policy")
def set_policy_command(
    subject: Annotated[str, typer.Argument(help="Model id, or `dataset:<id>` for a dataset's split.")],
    effective_from: Annotated[
        datetime,
        typer.Option(
            "--effective-from",
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"],
            help="When it applies (UTC unless an offset is given); a change needs the registry's notice.",
        ),
    ],
    share: ShareOption,
    compute_share_ppm: Annotated[int, typer.Option("--compute-share-ppm", help="The compute provider's cut.")] = 0,
    rpc_url: RpcOption = None,
    registry: RegistryOption = None,
    config: ConfigOption = None,
    output_json: JsonOption = False,
) -> None:
    """Set the split of a model or dataset from --effective-from on (the signer must be its governor)."""
    from settlement.onchain import set_policy

    settings = load_settings({"rpc_url": rpc_url, "registry": registry}, config)
    shares = _pairs(share, "--share")
    at = effective_from if effective_from.tzinfo else effective_from.replace(tzinfo=UTC)
    try:
        chain = _chain(settings)
        result = set_policy(chain, _registry(settings, chain), subject, at, shares, compute_share_ppm)
    except RoyaltyError as error:
        _fail(error)
    _report(result, output_json)


@registry_app.command("set-payout")
def set_payout_command(
    payout: Annotated[
        str, typer.Argument(callback=check_payout_address, help="The address the signer's payouts go to from now on.")
    ],
    rpc_url: RpcOption = None,
    registry: RegistryOption = None,
    config: ConfigOption = None,
    output_json: JsonOption = False,
) -> None:
    """Send the signer's payouts to PAYOUT (only an account itself can change its payout address)."""
    from settlement.onchain import set_payout

    settings = load_settings({"rpc_url": rpc_url, "registry": registry}, config)
    try:
        chain = _chain(settings)
        result = set_payout(chain, _registry(settings, chain), payout)
    except RoyaltyError as error:
        _fail(error)
    _report(result, output_json)


def sync_registry_command(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    rpc_url: RpcOption = None,
    registry: RegistryOption = None,
    confirmations: Annotated[
        int | None, typer.Option("--confirmations", help="Blocks an event must have (its own included).")
    ] = None,
    from_block: FromBlockOption = None,
    output_json: JsonOption = False,
) -> None:
    """Index the registry's events into the ledger, in block order; needs no key.

    Reads from where the previous run stopped; a rerun never stores an event twice. In on-chain mode an epoch
    settles with the registry as of the last block stored here.
    """
    from settlement.use_cases.sync_registry import sync_registry

    settings = load_settings(
        {
            "lake": lake,
            "data_path": data_path,
            "rpc_url": rpc_url,
            "registry": registry,
            "confirmations": confirmations,
            "registry_from_block": from_block,
        },
        config,
    )
    result = sync_from_chain(
        settings,
        "the registry's events",
        "registry events",
        lambda _, chain: _registry(settings, chain),
        sync_registry,
        settings.registry_from_block,
    )
    if output_json:
        _print_json(vars(result))
        return
    stdout.print(
        f"stored {result.events_added} registry event(s) from blocks {result.from_block}..{result.to_block} of chain "
        f"{result.chain_id} (head {result.head_block}), registry {result.contract}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add `deploy-registry`, `registry ...` and `sync-registry` to the `royalty` app."""
    app.command("deploy-registry")(deploy_registry)
    app.add_typer(registry_app, name="registry")
    app.command("sync-registry")(sync_registry_command)
