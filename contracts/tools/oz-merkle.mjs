#!/usr/bin/env node
// Builds trees with @openzeppelin/merkle-tree, the reference the Python tree is checked against.
//
//   node tools/oz-merkle.mjs --serve        one JSON request per stdin line, one answer per stdout line:
//                                           {"trees": [[[address, amount], ...], ...]} ->
//                                           {"trees": [{"root", "proofs" (in value order), "dump"}, ...]}
//   node tools/oz-merkle.mjs --bench FILE   FILE holds {"values": [[address, amount], ...]}; prints
//                                           {"leaves", "build_ms", "root"}, timing StandardMerkleTree.of only
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { performance } from 'node:perf_hooks'
import { StandardMerkleTree } from '@openzeppelin/merkle-tree'

const ENCODING = ['address', 'uint256']

function describe (values) {
  const tree = StandardMerkleTree.of(values, ENCODING)
  return { root: tree.root, proofs: values.map((_, i) => tree.getProof(i)), dump: tree.dump() }
}

const mode = process.argv[2]
if (mode === '--serve') {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (line.trim() === '') continue
    let answer
    try {
      answer = { trees: JSON.parse(line).trees.map(describe) }
    } catch (err) {
      answer = { error: String(err?.message ?? err) }
    }
    process.stdout.write(JSON.stringify(answer) + '\n')
  }
} else if (mode === '--bench') {
  const { values } = JSON.parse(readFileSync(process.argv[3], 'utf8'))
  const started = performance.now()
  const tree = StandardMerkleTree.of(values, ENCODING)
  const buildMs = performance.now() - started
  process.stdout.write(JSON.stringify({ leaves: values.length, build_ms: buildMs, root: tree.root }) + '\n')
} else {
  process.stderr.write('usage: oz-merkle.mjs --serve | --bench FILE\n')
  process.exit(2)
}
