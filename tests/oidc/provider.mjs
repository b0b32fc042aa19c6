// A real OpenID provider for ccgate's tests: node's `oidc-provider` (a certified
// implementation) issuing JWT access tokens by the client credentials grant, with a resource
// indicator for ccgate. Started by tests/it/oidc.rs on a free port over HTTPS.
//
//   node provider.mjs <modules-dir> <cert.pem> <key.pem> [port]
//
// Prints one JSON line {"issuer", "control"} once both servers listen. The control server
// (plain HTTP, loopback) lets a test act as the provider's operator:
//   POST /rotate  a new signing key becomes current; the old one stays published
//   POST /retire  every key but the current one is removed from the JWKS
//   GET  /kids    the published key ids, current first
import https from 'node:https';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { pathToFileURL } from 'node:url';

const [modules, certFile, keyFile, port = '0'] = process.argv.slice(2);
const { default: Provider } = await import(pathToFileURL(path.join(modules, 'oidc-provider', 'lib', 'index.js')));

const RESOURCE = 'urn:ccgate';
// One client per agent: the app asks for a token as `agent-153` and the token names agent 153.
const AGENTS = ['153', '154', '155'];
const SECRET = 'a-test-client-secret-of-some-length';

let serial = 0;
function newKey() {
  serial += 1;
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid: `es-${serial}-${crypto.randomBytes(3).toString('hex')}`, alg: 'ES256', use: 'sig' };
}
function rsaKey() {
  // oidc-provider signs ID tokens with RS256 by default and wants such a key; ccgate never
  // sees a token signed with it.
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: 'rs-id-tokens', alg: 'RS256', use: 'sig' };
}

let keys = [newKey()];
const rsa = rsaKey();
let handler;

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: AGENTS.map((agent) => ({
      client_id: `agent-${agent}`,
      client_secret: SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    // The current key first: oidc-provider signs with the first key of the algorithm.
    jwks: { keys: [...keys, rsa] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          if (indicator !== RESOURCE) throw new Error('unknown resource');
          return { scope: 'agent', audience: RESOURCE, accessTokenTTL: 600, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } };
        },
      },
    },
    extraTokenClaims: (ctx, token) => ({ agent_id: String(token.clientId).replace(/^agent-/, ''), tenant: 'acme' }),
  });
  provider.proxy = false;
  return provider.callback();
}

const server = https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, (req, res) => handler(req, res));
await new Promise((ok) => server.listen(Number(port), '127.0.0.1', ok));
const issuer = `https://localhost:${server.address().port}`;
handler = build(issuer);

const control = http.createServer((req, res) => {
  const reply = () => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ kids: keys.map((k) => k.kid) })); };
  if (req.method === 'POST' && req.url === '/rotate') { keys = [newKey(), ...keys]; handler = build(issuer); return reply(); }
  if (req.method === 'POST' && req.url === '/retire') { keys = [keys[0]]; handler = build(issuer); return reply(); }
  if (req.method === 'GET' && req.url === '/kids') return reply();
  res.statusCode = 404; res.end();
});
await new Promise((ok) => control.listen(0, '127.0.0.1', ok));
process.stdout.write(JSON.stringify({ issuer, control: `http://127.0.0.1:${control.address().port}`, client_secret: SECRET, resource: RESOURCE }) + '\n');
