"""One table of per-network parameters: addresses, genesis, proof of work, ports.

Every Bitcoin Core value comes from Core's src/kernel/chainparams.cpp (consensus and
address parameters, P2P ports) and src/chainparamsbase.cpp (RPC ports); the bcoin
values from bcoin 1.0.2's lib/protocol/networks.js (the regtest flavour our pinned test
node runs). testnet4's extra rules are BIP94's; signet's BIP325's.

    name            hrp   p2pkh p2sh  pow limit bits  BIP34   spacing/timespan  min-diff BIP94  P2P/RPC
    mainnet         bc    0x00  0x05  1d00ffff        227931  600 s / 14 d      no       no     8333/8332
    testnet (v3)    tb    0x6f  0xc4  1d00ffff        21111   600 s / 14 d      yes      no     18333/18332
    testnet4        tb    0x6f  0xc4  1d00ffff        1       600 s / 14 d      yes      yes    48333/48332
    signet          tb    0x6f  0xc4  1e0377ae        1       600 s / 14 d      no       no     38333/38332
    regtest (Core)  bcrt  0x6f  0xc4  207fffff        1       600 s / 1 d       yes      opt.   18444/18443
    bcoin-regtest   rb    0x3c  0x26  207fffff        never   600 s / 14 d      yes      no     48444/48332
"""

from __future__ import annotations

from dataclasses import dataclass

from .target import target_to_bits

__all__ = [
    "DEFAULT_SIGNET_CHALLENGE_HEX",
    "NETWORKS",
    "Network",
    "get_network",
    "networks_sharing_prefix",
]

# The public signet's block script (chainparams.cpp SigNetParams, used when no
# -signetchallenge is given): a 1-of-2 bare multisig, i.e. blocks need a signature.
DEFAULT_SIGNET_CHALLENGE_HEX = (
    "512103ad5e0edad18cb1f0fc0d28a3d4f1f3e445640337489abb10404f2d1e086be430"
    "210359ef5021964fe22d6f8e05b2463c9540ce96883fe3b278760f048f5189f2e6c452ae"
)


@dataclass(frozen=True)
class Network:
    """Parameters of one Bitcoin network that the chain and work layers need."""

    name: str
    bech32_hrp: str
    p2pkh_version: int
    p2sh_version: int
    genesis_hash_hex_display: str
    pow_limit: int
    # First height at which the coinbase must start with the BIP34 height push.
    bip34_height: int
    pow_no_retargeting: bool
    # fPowAllowMinDifficultyBlocks: a block more than 2 * target_spacing_s after its
    # parent must use pow_limit_bits (except the first block of a period).
    pow_allow_min_difficulty: bool
    default_rpc_port: int
    default_p2p_port: int
    target_spacing_s: int = 10 * 60  # nPowTargetSpacing
    target_timespan_s: int = 14 * 24 * 60 * 60  # nPowTargetTimespan
    # BIP94 (consensus.enforce_BIP94): timewarp rule on the first block of each period,
    # and retargets based on the period's first block.
    enforce_bip94: bool = False
    # BIP325 (consensus.signet_blocks): blocks must satisfy a signet challenge, which
    # the node chooses (-signetchallenge); signet_challenge_hex is the default one.
    signet_blocks: bool = False
    signet_challenge_hex: str | None = None
    # Names of other networks whose addresses this network also accepts as payouts.
    also_accepts: tuple[str, ...] = ()
    # nSubsidyHalvingInterval: blocks between halvings of the block reward.
    subsidy_halving_interval: int = 210_000

    def block_subsidy_sats(self, height: int) -> int:
        """The new coins a block at `height` may claim (validation.cpp GetBlockSubsidy)."""
        halvings = height // self.subsidy_halving_interval
        return 0 if halvings >= 64 else (50 * 100_000_000) >> halvings

    def accepted_names(self) -> tuple[str, ...]:
        """This network's name followed by the names in also_accepts."""
        return (self.name, *self.also_accepts)

    @property
    def pow_limit_bits(self) -> int:
        """The compact form of pow_limit: the bits of every minimum-difficulty block."""
        return target_to_bits(self.pow_limit)

    @property
    def difficulty_adjustment_interval(self) -> int:
        """Blocks per difficulty period (Consensus::Params::DifficultyAdjustmentInterval)."""
        return self.target_timespan_s // self.target_spacing_s


_MAIN_POW_LIMIT = int("00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 16)
_REGTEST_POW_LIMIT = int("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 16)
_SIGNET_POW_LIMIT = int("00000377ae000000000000000000000000000000000000000000000000000000", 16)
_REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"

# testnet3, testnet4 and signet share every prefix, so an address cannot tell them
# apart; each accepts the others' addresses rather than guessing.
_TEST_FAMILY = ("testnet", "testnet4", "signet")


def _rest_of_test_family(name: str) -> tuple[str, ...]:
    return tuple(n for n in _TEST_FAMILY if n != name)


NETWORKS: dict[str, Network] = {
    n.name: n
    for n in (
        Network(
            name="mainnet",
            bech32_hrp="bc",
            p2pkh_version=0x00,
            p2sh_version=0x05,
            genesis_hash_hex_display="000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
            pow_limit=_MAIN_POW_LIMIT,
            bip34_height=227931,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=False,
            default_rpc_port=8332,
            default_p2p_port=8333,
        ),
        Network(
            name="testnet",
            bech32_hrp="tb",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display="000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
            pow_limit=_MAIN_POW_LIMIT,
            bip34_height=21111,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=True,
            default_rpc_port=18332,
            default_p2p_port=18333,
            also_accepts=_rest_of_test_family("testnet"),
        ),
        Network(
            name="testnet4",
            bech32_hrp="tb",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display="00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
            pow_limit=_MAIN_POW_LIMIT,
            bip34_height=1,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=True,
            default_rpc_port=48332,
            default_p2p_port=48333,
            enforce_bip94=True,
            also_accepts=_rest_of_test_family("testnet4"),
        ),
        Network(
            name="signet",
            bech32_hrp="tb",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            # Every signet, whatever its challenge, shares this genesis block.
            genesis_hash_hex_display="00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
            pow_limit=_SIGNET_POW_LIMIT,
            bip34_height=1,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=False,
            default_rpc_port=38332,
            default_p2p_port=38333,
            signet_blocks=True,
            signet_challenge_hex=DEFAULT_SIGNET_CHALLENGE_HEX,
            also_accepts=_rest_of_test_family("signet"),
        ),
        Network(
            name="regtest",
            bech32_hrp="bcrt",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display=_REGTEST_GENESIS,
            pow_limit=_REGTEST_POW_LIMIT,
            bip34_height=1,
            pow_no_retargeting=True,
            pow_allow_min_difficulty=True,
            default_rpc_port=18443,
            default_p2p_port=18444,
            target_timespan_s=24 * 60 * 60,  # one day: 144-block periods
            subsidy_halving_interval=150,
            # enforce_BIP94 is off unless bitcoind runs with -test=bip94; Core >= 29's
            # getblocktemplate mintime/curtime honour the timewarp rule on every chain.
            # Our test node is bcoin, whose regtest wallet hands out its own prefixes.
            also_accepts=("bcoin-regtest",),
        ),
        Network(
            name="bcoin-regtest",
            bech32_hrp="rb",
            p2pkh_version=0x3C,
            p2sh_version=0x26,
            genesis_hash_hex_display=_REGTEST_GENESIS,
            pow_limit=_REGTEST_POW_LIMIT,
            # bcoin 1.0.x regtest sets bip34height to 100000000, i.e. never enforced;
            # we still always write the height push, which bcoin accepts.
            bip34_height=100_000_000,
            pow_no_retargeting=True,
            pow_allow_min_difficulty=True,  # targetReset: true
            subsidy_halving_interval=150,
            default_rpc_port=48332,
            default_p2p_port=48444,
            also_accepts=("regtest",),
        ),
    )
}

# Names other tools use for the same networks: Core's getblockchaininfo "chain" field
# says "main" and "test".
_ALIASES = {"main": "mainnet", "test": "testnet", "testnet3": "testnet"}


def get_network(name: str) -> Network:
    """Look a network up by name (or Core's chain alias); ValueError lists valid names."""
    key = _ALIASES.get(name, name)
    try:
        return NETWORKS[key]
    except (KeyError, TypeError):
        valid = ", ".join(NETWORKS)
        raise ValueError(f"unknown network {name!r}; valid names: {valid}") from None


def networks_sharing_prefix(*, hrp: str | None = None, version: int | None = None) -> list[Network]:
    """Networks whose bech32 HRP equals hrp, or whose P2PKH/P2SH version equals version."""
    found = []
    for net in NETWORKS.values():
        if hrp is not None and net.bech32_hrp == hrp:
            found.append(net)
        elif version is not None and version in (net.p2pkh_version, net.p2sh_version):
            found.append(net)
    return found
