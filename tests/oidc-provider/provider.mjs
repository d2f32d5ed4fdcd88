// A real, certified OpenID provider (panva/oidc-provider, OpenID Certified) for dify-gateway's
// OIDC end-to-end test (tests/oidc_e2e.rs). Not a mock: discovery, JWKS, authorization, token and
// userinfo endpoints, cookies, PKCE and ID token signing are all oidc-provider's own.
//
//   node provider.mjs --port=0 --redirect-uri=http://localhost:8080/sso/oidc/callback \
//     [--client-id=dify-gateway] [--client-secret=...] [--password=...]
//
// (or OIDC_PORT, OIDC_REDIRECT_URI, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_PASSWORD). Listens on
// 127.0.0.1; --port=0 picks a free port. The issuer is http://127.0.0.1:<port>. Prints
// `ready <issuer>` on stdout once it accepts connections, and `issued-tokens {...}` after each
// successful token answer (so the test can check that no token ends up in the gateway's logs).
//
// One confidential client (client_secret_basic, authorization code only, PKCE required) and one
// user, `ann` (password from --password, default `correct horse battery staple`). The interaction
// (login, then consent) is this file's own small HTML, built on oidc-provider's documented
// interaction API (interactionDetails / interactionFinished) instead of its development-only
// devInteractions: a login form `id="login"` (fields login, password) and a consent form
// `id="consent"`, so a scripted client can submit them as a browser would.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT ?? '0' },
    'redirect-uri': { type: 'string', default: process.env.OIDC_REDIRECT_URI },
    'client-id': { type: 'string', default: process.env.OIDC_CLIENT_ID ?? 'dify-gateway' },
    'client-secret': {
      type: 'string',
      default: process.env.OIDC_CLIENT_SECRET ?? 'e2e-client-secret-0123456789abcdef',
    },
    password: { type: 'string', default: process.env.OIDC_PASSWORD ?? 'correct horse battery staple' },
  },
});
if (!args['redirect-uri']) {
  console.error('provider.mjs: --redirect-uri (or OIDC_REDIRECT_URI) is required');
  process.exit(2);
}

// The one user. Claims as a corporate IdP would release them.
const ACCOUNTS = {
  ann: {
    password: args.password,
    claims: {
      sub: 'ann-7d1f0c52',
      email: 'Ann.Lee@Example.com',
      email_verified: true,
      name: 'Ann Lee',
      groups: ['dify-users', 'staff'],
    },
  },
};
const BY_SUB = Object.fromEntries(Object.values(ACCOUNTS).map((a) => [a.claims.sub, a]));

// A fresh RS256 signing key per run (no development keys).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `e2e-${randomBytes(6).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

const page = (title, body) => `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>${body}</body></html>`;

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(html);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function loginPage(uid, error) {
  return page('Sign in to the test provider', `
${error ? `<p id="error">${escape(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
  <input type="text" name="login" placeholder="login" required>
  <input type="password" name="password" placeholder="password" required>
  <button type="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${escape(uid)}/abort"><button type="submit">Cancel</button></form>`);
}

function consentPage(uid, client, details) {
  const scopes = (details.missingOIDCScope ?? []).map((s) => `<li>${escape(s)}</li>`).join('');
  return page('Authorize', `
<p>${escape(client?.clientName ?? client?.clientId ?? 'The client')} asks for:</p><ul>${scopes}</ul>
<form id="consent" method="post" action="/interaction/${escape(uid)}/confirm">
  <input type="hidden" name="prompt" value="consent">
  <button type="submit">Continue</button>
</form>
<form id="abort" method="post" action="/interaction/${escape(uid)}/abort"><button type="submit">Cancel</button></form>`);
}

// The interaction routes (documented pattern: interactionDetails + interactionFinished).
async function interaction(provider, req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const [, , uid, action] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p>interaction mismatch</p>'));
    return;
  }
  const { prompt, params, session, grantId } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      send(res, 200, loginPage(uid));
    } else if (prompt.name === 'consent') {
      const client = await provider.Client.find(params.client_id);
      send(res, 200, consentPage(uid, client, prompt.details));
    } else {
      send(res, 501, page('Error', `<p>prompt ${escape(prompt.name)} not implemented</p>`));
    }
    return;
  }
  if (req.method !== 'POST') {
    send(res, 405, page('Error', '<p>method not allowed</p>'));
    return;
  }
  const form = await readForm(req);
  if (action === 'login' && prompt.name === 'login') {
    const account = ACCOUNTS[form.get('login') ?? ''];
    if (!account || account.password !== form.get('password')) {
      send(res, 401, loginPage(uid, 'Wrong login or password.'));
      return;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: account.claims.sub },
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { details: missing } = prompt;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    await provider.interactionFinished(req, res, {
      consent: { grantId: await grant.save() },
    }, { mergeWithLastSubmission: true });
    return;
  }
  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  send(res, 400, page('Error', '<p>unexpected interaction step</p>'));
}

let handler = (_req, res) => {
  res.writeHead(503);
  res.end();
};
const server = createServer((req, res) => handler(req, res));
server.listen(Number(args.port), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: args['client-id'],
      client_secret: args['client-secret'],
      client_name: 'dify-gateway (e2e)',
      redirect_uris: [args['redirect-uri']],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    // Scopes and the claims they release; `groups` as Keycloak or Authentik release it.
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    async findAccount(_ctx, sub) {
      const account = BY_SUB[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { ...account.claims };
        },
      };
    },
    interactions: { url: (_ctx, i) => `/interaction/${i.uid}` },
    features: { devInteractions: { enabled: false } },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    jwks: { keys: [signingKey] },
    ttl: {
      AccessToken: 600, AuthorizationCode: 60, Grant: 3600, IdToken: 600, Interaction: 600, Session: 3600,
    },
  });
  for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error']) {
    provider.on(event, (_ctx, err) => console.error(`${event}: ${err?.message} ${err?.error_description ?? ''}`));
  }
  // Tell the test which tokens were issued (it checks the gateway never logs them).
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === 'token' && ctx.status === 200 && ctx.body) {
      const { id_token: idToken, access_token: accessToken } = ctx.body;
      console.log(`issued-tokens ${JSON.stringify({ id_token: idToken, access_token: accessToken })}`);
    }
  });
  const callback = provider.callback();
  handler = (req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interaction(provider, req, res).catch((err) => {
        console.error(`interaction failed: ${err?.message}`);
        if (!res.headersSent) send(res, 400, page('Error', `<p>${escape(err?.message)}</p>`));
        else res.end();
      });
    } else {
      callback(req, res);
    }
  };
  console.log(`ready ${issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
