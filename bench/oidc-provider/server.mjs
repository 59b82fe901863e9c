// node-oidc-provider 8.8.1 (npm `oidc-provider`, pinned in package.json and package-lock.json)
// serving its OAuth 2.0 refresh_token grant: the peer BENCHMARKS.md compares prismd's `refresh`
// against, measured by prism-bench's `peer` scenario with the same load generator, the same
// connections and the same duration as prismd's own scenarios.
//
// Usage: node server.mjs --port P --tokens N --out FILE
//
// Install it outside the clone (node_modules is never committed nor left in the repo):
//   mkdir -p /var/tmp/prism-peer-oidc-provider
//   cp bench/oidc-provider/{package.json,package-lock.json,server.mjs} /var/tmp/prism-peer-oidc-provider/
//   (cd /var/tmp/prism-peer-oidc-provider && npm ci --no-audit --no-fund --loglevel=error)
//   node /var/tmp/prism-peer-oidc-provider/server.mjs --port 7071 --tokens 10000 --out /tmp/peer.json
//
// What it runs: one Provider, issuer http://127.0.0.1:P, listening on 127.0.0.1:P, with one
// confidential client (`prism-bench`, client_secret_basic) and an Ed25519 signing key made at
// start-up, so that ID Tokens are signed with EdDSA as prismd signs. Everything else is
// node-oidc-provider's default: opaque access tokens (stored in the adapter on every refresh,
// as the library does out of the box), its in-memory adapter, and its default middleware.
// Refresh tokens are not rotated (`rotateRefreshToken: false`, and a 30-day TTL), so every
// refresh token can be used again and again for the whole run, as prismd's are.
//
// Before listening it mints N refresh tokens directly through the provider's models (no
// browser): for each one a Grant (account `bench-user-<i % 100>`, OIDC scope
// `openid offline_access`) and a RefreshToken bound to it, as the authorization_code grant
// would have issued it. Once listening, `GET /readyz` answers 200, and FILE (written to
// FILE.tmp, then renamed) holds one JSON object:
//   {"token_path": "/token", "authorization": "Basic ...", "refresh_tokens": ["...", ...]}
// Each request is then `POST /token` with `grant_type=refresh_token&refresh_token=...` and that
// Authorization header; the answer is 200 with access_token, id_token, expires_in, scope and
// token_type (and the same refresh_token).
//
// The in-memory adapter's store: node-oidc-provider's MemoryAdapter keeps everything (grants,
// refresh tokens, and the access token each refresh stores) in one LRU of 1,000 entries. Left
// alone, minting more than a few hundred tokens, or a few hundred refreshes, would evict the
// bench's refresh tokens and grants, and the refreshes would fail with invalid_grant. So the
// adapter stays the default one, with the same LRU of 1,000 for everything the server stores
// while it serves, but the refresh tokens and grants minted here are kept in a Map beside it,
// as a database would keep them: an eviction is never a benchmark error, and the memory the
// server holds does not grow with the number of requests.
//
// Warnings: node-oidc-provider prints each of its development-only warnings once, at start-up,
// on stderr (the in-memory adapter, devInteractions); nothing is printed per request, so they
// are left as they are. The "default ... function called" notices (findAccount, ttl.*) are
// avoided by configuring those options with the values their defaults return. Errors the
// server meets while serving (server_error) are printed on stderr; a client's invalid_grant is
// an ordinary 400 answer and is not logged.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import QuickLRU from 'quick-lru'; // the LRU node-oidc-provider's MemoryAdapter uses (pinned by the lock)
import Provider from 'oidc-provider';
import { setStorage } from 'oidc-provider/lib/adapters/memory_adapter.js';

const CLIENT_ID = 'prism-bench';
const SCOPE = 'openid offline_access';
const ACCOUNTS = 100;
const THIRTY_DAYS = 30 * 24 * 60 * 60;

function fail(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(1);
}

function parse() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        tokens: { type: 'string' },
        out: { type: 'string' },
      },
      strict: true,
    }));
  } catch (err) {
    fail(`${err.message}\nusage: node server.mjs --port P --tokens N --out FILE`);
  }
  const port = Number(values.port);
  const tokens = Number(values.tokens);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail('--port must be a TCP port');
  if (!Number.isInteger(tokens) || tokens < 1) fail('--tokens must be a positive integer');
  if (!values.out) fail('--out FILE is required');
  return { port, tokens, out: values.out };
}

// The MemoryAdapter's store (get, set, delete): its default LRU of 1,000 entries, plus a Map
// for the entries written while `pinning` is on (the bench's grants and refresh tokens).
class PinnedStore {
  constructor() {
    this.lru = new QuickLRU({ maxSize: 1000 }); // the MemoryAdapter's own default
    this.pinned = new Map();
    this.pinning = false;
  }

  get(key) {
    const value = this.pinned.get(key);
    return value !== undefined ? value : this.lru.get(key);
  }

  set(key, value, ...rest) {
    if (this.pinned.has(key)
      || (this.pinning && (key.startsWith('Grant:') || key.startsWith('RefreshToken:')))) {
      this.pinned.set(key, value);
    } else {
      this.lru.set(key, value, ...rest);
    }
    return this;
  }

  delete(key) {
    const pinned = this.pinned.delete(key);
    return this.lru.delete(key) || pinned;
  }
}

// RFC 6749 2.3.1: client_id and client_secret are each application/x-www-form-urlencoded
// before they are joined with ':' and base64-encoded.
function formEncode(value) {
  return new URLSearchParams({ v: value }).toString().slice(2);
}

async function main() {
  const { port, tokens, out } = parse();
  const issuer = `http://127.0.0.1:${port}`;

  const store = new PinnedStore();
  setStorage(store);

  const { privateKey } = generateKeyPairSync('ed25519');
  const signingKey = {
    ...privateKey.export({ format: 'jwk' }),
    kid: `bench-${randomBytes(6).toString('hex')}`,
    alg: 'EdDSA',
    use: 'sig',
  };
  const clientSecret = randomBytes(32).toString('base64url');

  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: clientSecret,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/cb'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'EdDSA',
    }],
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // The default findAccount, without its once-only "you MUST change it" warning: the
    // account is the subject, its only claim `sub`.
    async findAccount(ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
    rotateRefreshToken: false,
    ttl: {
      // The values the default ttl functions return here, set so that they do not print
      // their once-only "you SHOULD change it" notices on the first refresh.
      AccessToken: 60 * 60,
      IdToken: 60 * 60,
      // Long enough that no refresh token or grant expires during a run.
      Grant: THIRTY_DAYS,
      RefreshToken: THIRTY_DAYS,
    },
  });

  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server.mjs: server_error on ${ctx.method} ${ctx.path}: ${err.stack || err}\n`);
  });

  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/readyz') {
      ctx.status = 200;
      ctx.body = 'ok\n';
      return;
    }
    await next();
  });

  // The client instance the tokens are bound to.
  const client = await provider.Client.find(CLIENT_ID);
  if (!client) fail('the static client was not found');

  const refreshTokens = new Array(tokens);
  const authTime = Math.floor(Date.now() / 1000);
  store.pinning = true;
  for (let i = 0; i < tokens; i += 1) {
    const accountId = `bench-user-${i % ACCOUNTS}`;
    const grant = new provider.Grant({ accountId, clientId: CLIENT_ID });
    grant.addOIDCScope(SCOPE);
    // eslint-disable-next-line no-await-in-loop
    const grantId = await grant.save();
    const refreshToken = new provider.RefreshToken({
      accountId,
      client,
      grantId,
      scope: SCOPE,
      gty: 'authorization_code',
      authTime,
    });
    // eslint-disable-next-line no-await-in-loop
    refreshTokens[i] = await refreshToken.save();
  }
  store.pinning = false;

  const server = provider.listen(port, '127.0.0.1');
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  server.on('error', (err) => process.stderr.write(`server.mjs: ${err.stack || err}\n`));

  const authorization = `Basic ${Buffer.from(`${formEncode(CLIENT_ID)}:${formEncode(clientSecret)}`).toString('base64')}`;
  const tmp = `${out}.tmp`;
  await writeFile(tmp, `${JSON.stringify({
    token_path: '/token',
    authorization,
    refresh_tokens: refreshTokens,
  })}\n`);
  await rename(tmp, out);
  process.stderr.write(`server.mjs: oidc-provider listening on ${issuer}, ${tokens} refresh tokens in ${out}\n`);

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`server.mjs: ${signal}, stopping\n`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err) => fail(err.stack || String(err)));
