"""The demo's in-process chain with a past: blocks the demo stamps itself, days before now, then live blocks.

The on-chain registry refuses a policy dated before its block, so a demo whose traffic spans days needs blocks
that old. eth-tester's py-evm backend starts here from a genesis block `genesis_time`; while the demo writes the
history, transactions are queued and mined together into one block stamped with the time the demo gives
(`mine`), each with a fixed gas limit (no gas estimation: the simulation was most of the demo's fixed cost).
`live()` then hands the chain over to ordinary use: every later transaction is mined at once, at the wall clock.
"""

from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from royalty.exceptions import DemoChainError
from settlement.onchain import Chain, embedded_url

# Gas limits of the demo's own transactions: generous bounds, the block is charged what they use.
gas_call_max = 1_000_000
gas_deploy_max = 12_000_000


@dataclass
class _Sent:
    action: str
    tx_hash: str


@dataclass
class HistoryChain:
    """An in-process chain whose blocks the demo mines at the times it chooses, oldest first."""

    genesis_time: int
    chain: Chain = field(init=False)
    accounts: list[LocalAccount] = field(init=False)
    time: int = field(init=False)
    _sent: list[_Sent] = field(init=False, default_factory=list)
    _nonces: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        parameters = PyEVMBackend.generate_genesis_params(overrides={"timestamp": self.genesis_time})
        self._backend = PyEVMBackend(genesis_parameters=parameters)
        self._tester = EthereumTester(backend=self._backend, auto_mine_transactions=False)
        w3 = Web3(EthereumTesterProvider(self._tester))
        # eth-tester's funded accounts; the first is the embedded chain's signer (key 1), as `connect(None)` uses.
        self.accounts = [Account.from_key(key.to_bytes()) for key in self._backend.account_keys]
        self.chain = Chain(w3, w3.eth.chain_id, embedded_url, self.accounts[0])
        self.time = self.genesis_time

    def begin(self, at: int) -> None:
        """Start the next block, stamped `at` (unix seconds): the transactions `send` queues run at that time (the
        registry compares `effectiveFrom` with it)."""
        if at <= self.time:
            raise DemoChainError(f"a block at {at} would not be later than the last one ({self.time})")
        self._backend.chain.header = self._backend.chain.header.copy(timestamp=at)
        self.time = at

    def send(self, call: Any, action: str, signer: LocalAccount | None = None, gas: int = gas_call_max) -> str:
        """Apply `call` (a contract function or constructor) signed by `signer` (default: the first account) to the
        block begun; return its transaction hash."""
        signer = signer or self.accounts[0]
        nonce = self._nonces.get(signer.address, 0)
        params = {"from": signer.address, "nonce": nonce, "gas": gas, "chainId": self.chain.chain_id}
        tx = call.build_transaction(params)
        raw = bytes(signer.sign_transaction(tx).raw_transaction)
        tx_hash = "0x" + bytes(self._backend.send_raw_transaction(raw)).hex()
        self._nonces[signer.address] = nonce + 1
        self._sent.append(_Sent(action, tx_hash))
        return tx_hash

    def mine(self) -> int:
        """Mine the block begun with the transactions sent; return its number. Raises `DemoChainError` naming the
        first transaction that reverted."""
        self._tester.mine_blocks(1)
        sent, self._sent = self._sent, []
        for item in sent:
            receipt = self.chain.w3.eth.get_transaction_receipt(item.tx_hash)  # type: ignore[arg-type]
            if receipt["status"] != 1:
                raise DemoChainError(f"the demo's transaction `{item.action}` reverted ({item.tx_hash})")
        return int(self.chain.w3.eth.block_number)

    def deploy(self, abi: list, bytecode: str, args: tuple, at: int, action: str) -> Contract:
        """Deploy a contract in its own block stamped `at`; return it."""
        factory = self.chain.w3.eth.contract(abi=abi, bytecode=bytecode)
        self.begin(at)
        tx_hash = self.send(factory.constructor(*args), action, gas=gas_deploy_max)
        self.mine()
        address = self.chain.w3.eth.get_transaction_receipt(tx_hash)["contractAddress"]  # type: ignore[arg-type]
        return self.chain.w3.eth.contract(address=address, abi=abi)

    def live(self) -> Chain:
        """From now on every transaction is mined at once at the wall clock (a first such block is mined now)."""
        if self._sent:
            raise DemoChainError(f"{len(self._sent)} queued transactions were never mined")
        self._tester.enable_auto_mine_transactions()
        return self.chain
