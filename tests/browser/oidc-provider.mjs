// The company's identity provider, for the sign-in tests: oidc-provider (a certified OpenID
// Provider) on 127.0.0.1:$PORT, its development login pages (any password), the accounts and
// their groups, a confidential client for the dashboard (code flow, PKCE required) and a public
// one for the CLI (device authorization grant), all from $OIDC_TEST_CONFIG (JSON). It signs ID
// tokens with an RSA key made at each start under a random key id (`kid`), as a provider that
// has just rotated its key: a restart is a rotation. Prints `listening` once it takes requests.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const config = JSON.parse(process.env.OIDC_TEST_CONFIG);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [
    {
      client_id: config.web.client_id,
      client_secret: config.web.client_secret,
      redirect_uris: config.web.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
    {
      client_id: config.cli.client_id,
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  // The claims of the scopes asked for go into the ID token too (most providers put groups there).
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
  },
  pkce: { required: () => true },
  ttl: { IdToken: config.id_token_ttl ?? 3600 },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.com`, groups: config.accounts[id] ?? [] };
      },
    };
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log('listening');
});
