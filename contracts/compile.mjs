#!/usr/bin/env node
// Compiles contracts/src with the npm solc (standard JSON, fixed settings) and writes one artifact per
// contract to contracts/artifacts/NAME.json: ABI, bytecode, compiler version, settings, source hashes.
//
//   node compile.mjs               rewrite the committed artifacts
//   node compile.mjs --out DIR     write them to DIR instead (the drift test compares the two)
//   node compile.mjs --check       exit 1, naming the files, if the committed artifacts are stale
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const solc = require('solc')

const here = dirname(fileURLToPath(import.meta.url))
const CONTRACTS = [
  'RoyaltyDistributor', 'TestToken', 'MaliciousToken', 'ModelRegistry',
  'CommunityToken', 'CommunityGovernor', 'CommunityTimelock', 'TestContractWallet', 'FeeToken'
]
// Changing any of these changes every bytecode: they are part of the artifact, and the drift test
// recompiles with exactly these. Cancun is the newest fork that every major EVM chain runs.
const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  viaIR: false,
  metadata: { bytecodeHash: 'ipfs' }
}

function sha256 (text) {
  return createHash('sha256').update(text, 'utf8').digest('hex')
}

function readSource (name) {
  if (name.startsWith('@openzeppelin/') || name.startsWith('solady/')) {
    return readFileSync(join(here, 'node_modules', name), 'utf8')
  }
  return readFileSync(join(here, name), 'utf8')
}

function compile () {
  const sources = {}
  for (const name of CONTRACTS) sources[`src/${name}.sol`] = { content: readSource(`src/${name}.sol`) }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      ...SETTINGS,
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'metadata'] } }
    }
  }
  const read = {}
  const findImports = (path) => {
    try {
      read[path] = readSource(path)
      return { contents: read[path] }
    } catch (err) {
      return { error: `cannot read ${path}: ${err.message}` }
    }
  }
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }))
  const errors = (output.errors ?? []).filter((e) => e.severity === 'error')
  // Warnings inside OpenZeppelin's and Solady's sources (such as notes on transient storage) are theirs to keep.
  const ours = (output.errors ?? []).filter((e) => e.severity === 'error' || !/^(@|solady\/)/.test(e.sourceLocation?.file ?? ''))
  for (const e of ours) console.error(e.formattedMessage)
  if (errors.length > 0) process.exit(1)

  const artifacts = {}
  for (const name of CONTRACTS) {
    const sourceName = `src/${name}.sol`
    const contract = output.contracts[sourceName][name]
    const metadata = JSON.parse(contract.metadata)
    const sourceHashes = {}
    for (const used of Object.keys(metadata.sources).sort()) {
      sourceHashes[used] = sha256(sources[used]?.content ?? read[used])
    }
    artifacts[name] = {
      contractName: name,
      sourceName,
      compiler: { name: 'solc', version: solc.version() },
      settings: SETTINGS,
      sourceSha256: sourceHashes[sourceName],
      sources: sourceHashes,
      abi: contract.abi,
      bytecode: '0x' + contract.evm.bytecode.object,
      deployedBytecode: '0x' + contract.evm.deployedBytecode.object
    }
  }
  return artifacts
}

const args = process.argv.slice(2)
const artifacts = compile()
const committedDir = join(here, 'artifacts')
if (args[0] === '--check') {
  const stale = CONTRACTS.filter((name) => {
    const path = join(committedDir, `${name}.json`)
    return !existsSync(path) || readFileSync(path, 'utf8') !== JSON.stringify(artifacts[name], null, 2) + '\n'
  })
  if (stale.length > 0) {
    console.error(`stale artifacts: ${stale.join(', ')}; run \`node contracts/compile.mjs\` and commit them`)
    process.exit(1)
  }
} else {
  const outDir = args[0] === '--out' ? args[1] : committedDir
  mkdirSync(outDir, { recursive: true })
  for (const name of CONTRACTS) {
    writeFileSync(join(outDir, `${name}.json`), JSON.stringify(artifacts[name], null, 2) + '\n')
  }
}
