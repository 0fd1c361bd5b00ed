#!/usr/bin/env node
// Seed a FHIR server with a Bundle: in-process (loadBundle, used by server.js --seed) or over
// HTTP against a running server:  node seed.js --url http://127.0.0.1:8090 [--token T] seed-bundle.json
'use strict';

const fs = require('node:fs');

// Turn a collection/batch Bundle into a transaction so urn:uuid references resolve.
function asTransaction(bundle) {
  if (bundle.resourceType !== 'Bundle') throw new Error('seed file is not a Bundle');
  if (bundle.type === 'transaction' || bundle.type === 'batch') return bundle;
  return {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: (bundle.entry || []).map((e) => ({
      fullUrl: e.fullUrl,
      resource: e.resource,
      request: e.request || { method: 'POST', url: e.resource.resourceType },
    })),
  };
}

async function loadBundle(router, repo, bundle) {
  const tx = asTransaction(bundle);
  const req = { method: 'POST', url: '/', pathname: '', body: tx, params: {}, query: {}, headers: {} };
  const [outcome, result] = await router.handleRequest(req, repo);
  const failed = (result?.entry || []).filter((e) => !/^2/.test(e.response?.status || ''));
  if (!result || failed.length) {
    throw new Error(`seed failed: ${JSON.stringify(failed.length ? failed[0] : outcome)}`);
  }
  return result.entry.length;
}

async function main() {
  const args = process.argv.slice(2);
  let url = 'http://127.0.0.1:8090';
  let token = '';
  const files = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--url') url = args[++i];
    else if (args[i] === '--token') token = args[++i];
    else files.push(args[i]);
  }
  if (!files.length) files.push(`${__dirname}/seed-bundle.json`);
  for (const file of files) {
    const tx = asTransaction(JSON.parse(fs.readFileSync(file, 'utf8')));
    const headers = { 'Content-Type': 'application/fhir+json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(url.replace(/\/$/, '') + '/', { method: 'POST', headers, body: JSON.stringify(tx) });
    const body = await res.json();
    if (!res.ok) throw new Error(`seed failed (${res.status}): ${JSON.stringify(body)}`);
    console.log(`seeded ${body.entry.length} resources from ${file}`);
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}

module.exports = { loadBundle, asTransaction };
