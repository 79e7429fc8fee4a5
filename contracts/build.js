#!/usr/bin/env node
// Compiles the kit (src/), its examples (examples/) and the test contracts (test/) with solcjs's
// standard-JSON interface, and writes one JSON file per contract: its ABI, creation bytecode and
// method identifiers (the selectors a client calls it by).
//
//   node build.js [OUT_DIR] [--strict]
//
// OUT_DIR defaults to build/. --strict fails on warnings too. `infernet-sdk/` imports resolve to the
// stand-in under test/infernet-sdk/ (see README.md for building against the real SDK).
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = __dirname;
const SOURCE_DIRS = ['src', 'examples', 'test'];
const REMAPPINGS = ['infernet-sdk/=test/infernet-sdk/'];

function solidityFiles(dir) {
  const found = [];
  for (const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const relative = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...solidityFiles(relative));
    else if (entry.name.endsWith('.sol')) found.push(relative);
  }
  return found;
}

// Imports not among the sources (none today) are read from this directory only.
function findImport(importPath) {
  const file = path.resolve(ROOT, importPath);
  if (!file.startsWith(ROOT + path.sep) || !fs.existsSync(file)) {
    return { error: `${importPath} is not a file under ${ROOT}` };
  }
  return { contents: fs.readFileSync(file, 'utf8') };
}

function main(argv) {
  const strict = argv.includes('--strict');
  const positional = argv.filter((arg) => !arg.startsWith('--'));
  const outDir = path.resolve(positional[0] || path.join(ROOT, 'build'));

  const sources = {};
  for (const dir of SOURCE_DIRS) {
    for (const file of solidityFiles(dir)) sources[file] = { content: fs.readFileSync(path.join(ROOT, file), 'utf8') };
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      remappings: REMAPPINGS,
      optimizer: { enabled: true, runs: 200 },
      // a fork that anvil and the chains Infernet runs on all take, whatever solc's default
      evmVersion: 'cancun',
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.methodIdentifiers'] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));

  const problems = (output.errors || []).filter((e) => e.severity === 'error' || (strict && e.severity === 'warning'));
  for (const message of output.errors || []) process.stderr.write(message.formattedMessage + '\n');
  if (problems.length > 0) {
    process.stderr.write(`solc ${solc.version()}: ${problems.length} problem(s), nothing written\n`);
    return 1;
  }

  fs.mkdirSync(outDir, { recursive: true });
  const written = {};
  for (const [source, contracts] of Object.entries(output.contracts || {})) {
    for (const [name, contract] of Object.entries(contracts)) {
      if (written[name]) {
        process.stderr.write(`two contracts are named ${name}: ${written[name]} and ${source}\n`);
        return 1;
      }
      written[name] = source;
      const artifact = {
        contractName: name,
        sourceName: source,
        compiler: solc.version(),
        abi: contract.abi,
        bytecode: '0x' + contract.evm.bytecode.object,
        methodIdentifiers: contract.evm.methodIdentifiers,
      };
      fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + '\n');
    }
  }
  process.stdout.write(`solc ${solc.version()}: ${Object.keys(written).length} contracts written to ${outDir}\n`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
