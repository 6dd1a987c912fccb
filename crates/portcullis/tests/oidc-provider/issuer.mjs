// A third-party OIDC issuer for Portcullis's integration tests: the npm
// `oidc-provider` (https://github.com/panva/node-oidc-provider), configured as
// a machine-to-machine issuer. It proves the gateway accepts tokens it did not
// mint itself (RFC 9068 `at+jwt` access tokens), not only `portcullis dev-idp`'s.
//
// TEST FIXTURE, DEVELOPMENT ONLY: in-memory storage, a key generated at start,
// a client secret committed to the repository, plain HTTP.
//
//   node issuer.mjs PORT [ES256|RS256]      (or PORT / ISSUER_ALG in the environment)
//
// Issuer URL http://127.0.0.1:PORT. Prints one line starting "ready" once listening.
// Client `ci-client` gets a token with:
//   curl -u ci-client:SECRET -d grant_type=client_credentials \
//        -d resource=urn:portcullis http://127.0.0.1:PORT/token

import { generateKeyPairSync } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.PORT);
const alg = process.argv[3] ?? process.env.ISSUER_ALG ?? 'ES256';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node issuer.mjs PORT [ES256|RS256]');
  process.exit(2);
}
if (alg !== 'ES256' && alg !== 'RS256') {
  console.error(`unsupported algorithm ${alg}: expected ES256 or RS256`);
  process.exit(2);
}

// Must match the `issuer` in the gateway config byte for byte: the gateway
// compares it with the discovery document's `issuer` and the tokens' `iss`.
const issuer = `http://127.0.0.1:${port}`;

// A fresh signing key per run, so no private key is committed. The gateway
// finds it through discovery -> jwks_uri, by the `kid` oidc-provider derives.
console.error(`oidc-provider loaded; making a ${alg} key`);
const { privateKey } = alg === 'ES256'
  ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
  : generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig' };

// The resource servers (RFC 8707 resource indicators) a client may ask for a
// token for. Only these two exist; any other `resource` is `invalid_target`.
const resourceServers = {
  // Portcullis: the `aud` the gateway is configured to expect.
  'urn:portcullis': { audience: 'portcullis' },
  // Some other API: a genuine, well-signed token that is not meant for the
  // gateway, which must refuse it for its audience.
  'urn:other-service': { audience: 'other-service' },
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'ci-client',
      // A test-fixture secret, not a credential of anything real.
      client_secret: 'ci-client-secret-test-fixture-only',
      // A workload authenticating as itself: no users, no browser redirects.
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      // oidc-provider checks this client default against the keystore even
      // though no ID token is ever issued; it must name an algorithm we have.
      id_token_signed_response_alg: alg,
    },
  ],
  jwks: { keys: [signingKey] },
  features: {
    // The grant CI jobs and daemons use: the client's own credentials for a token.
    clientCredentials: { enabled: true },
    // Without a resource indicator oidc-provider issues opaque tokens (which
    // only it can introspect); with one, the resource server's settings below
    // decide the audience and the format.
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo(ctx, resourceIndicator) {
        const server = resourceServers[resourceIndicator];
        if (!server) throw new errors.InvalidTarget();
        return {
          ...server,
          // Required by oidc-provider; granted scopes are the requested ones
          // within this list. The gateway does not look at scopes.
          scope: 'connect',
          // RFC 9068 JWT access tokens (header typ `at+jwt`) that the gateway
          // can verify offline with the issuer's JWKS.
          accessTokenFormat: 'jwt',
          accessTokenTTL: 10 * 60,
          jwt: { sign: { alg } },
        };
      },
    },
    // The built-in login pages are for users; there are none here.
    devInteractions: { enabled: false },
  },
});

// Unexpected failures inside the issuer show up in the test's log.
provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('grant.error', (_ctx, err) => console.error('grant.error', err.message, err.error_description ?? ''));

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready: oidc-provider issuer ${issuer} (${alg}); development and tests only`);
});
