//! Sign-in through the company's identity provider (OpenID Connect). The browser: `/auth/login`
//! sends it to the provider with an authorization-code request (PKCE S256, a random `state` and
//! `nonce`, kept in a signed cookie of the sign-in, `session::Attempt`); `/auth/callback` checks
//! the state, exchanges the code with the verifier and the client secret, verifies the ID token
//! (signature by the provider's keys, issuer, audience, expiry, the nonce of this sign-in), maps
//! its groups claim to a role and teams by the policy file (`GroupPolicy`) and sets the session
//! cookie (`session::Session`, signed with the replicas' shared key, so any replica takes it);
//! `/auth/logout` clears it. The CLI (`tenure login`): the device authorization grant against
//! the provider (`/api/auth/oidc` says where), then `/api/auth/session` turns the ID token into a
//! session token it sends as a bearer token. Every sign-in, done or refused, is audited. The
//! client secret is read from a file or the environment, never a flag, and never logged.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError, Client, ClientId,
    ClientSecret, CsrfToken, DeviceAuthorizationUrl, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IdToken, IdTokenClaims, IdTokenFields, IssuerUrl, Nonce, NonceVerifier, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::identity::{Action, Principal, Role, Via};
use super::pages::PageError;
use super::session::{self, Attempt, Session};
use super::{AppState, Caller, Problem};
use crate::secret::Secret;
use crate::store::AuditOutcome;

/// The ID token's claims beyond the standard ones, by name: where the groups claim is read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: HashMap<String, serde_json::Value>,
}

impl AdditionalClaims for OtherClaims {}

/// What discovery reads beyond the core metadata: the device authorization endpoint, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceEndpoint {
    #[serde(default)]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

/// The provider's discovery document, with its keys.
pub type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

pub type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// An OpenID Connect client as discovery leaves it (authorization endpoint set, token and
/// userinfo endpoints as the provider says).
pub type OidcClient<HasDeviceAuthUrl = EndpointNotSet> = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    HasDeviceAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type ProviderIdToken =
    IdToken<OtherClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// An HTTP client for the provider: no redirects followed (a discovery document or token
/// endpoint that redirects elsewhere is refused, not followed), bounded in time.
pub fn provider_http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .context("build the identity provider's HTTP client")
}

/// The provider's discovery document (and its keys, which verify ID tokens).
pub async fn discover(issuer: &str, http: &reqwest::Client) -> anyhow::Result<Metadata> {
    let issuer = IssuerUrl::new(issuer.to_owned()).context("the issuer URL")?;
    Metadata::discover_async(issuer, http).await.map_err(|error| anyhow::anyhow!("{}", chain(&error)))
}

/// An error and its causes on one line (the provider's answers hold no secret of ours).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One group's grant in the policy file (each value with where it is, to locate errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    role: Spanned<String>,
    #[serde(default)]
    teams: Vec<Spanned<String>>,
}

/// The policy file: which ID token claim holds the groups, extra scopes to ask for, and what
/// each group grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_claim")]
    claim: String,
    #[serde(default)]
    scopes: Vec<String>,
    groups: HashMap<String, Grant>,
}

fn default_claim() -> String {
    "groups".to_owned()
}

/// The provider's groups mapped to a role and teams. A member of several groups gets the
/// highest role they grant; the teams are those of the groups granting that role, and none
/// (every team) if one of them names none. No group of the policy: no sign-in.
#[derive(Debug, Clone)]
pub struct GroupPolicy {
    pub claim: String,
    pub scopes: Vec<String>,
    grants: HashMap<String, (Role, Vec<String>)>,
}

/// Why a policy file is refused: each error as `file:line:column: message`, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<String>);

impl std::fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for PolicyErrors {}

/// The largest policy file read: a few thousand groups.
const MAX_POLICY_BYTES: u64 = 1 << 20;

impl GroupPolicy {
    /// Read and validate the policy file at `path`; errors name it, each located.
    pub fn load(path: &Path) -> Result<GroupPolicy, PolicyErrors> {
        let file = path.display().to_string();
        GroupPolicy::parse(
            &read_policy(path).map_err(|error| PolicyErrors(vec![format!("{file}:1:1: {error}")]))?,
            &file,
        )
    }

    /// Validate the text of a policy file; `file` names it in errors. Every error is located:
    /// YAML syntax, an unknown or missing field, a role that is not viewer, operator or admin, a
    /// team that is not a team name (as jobs' `team:`).
    pub fn parse(text: &str, file: &str) -> Result<GroupPolicy, PolicyErrors> {
        let located =
            |line: u64, column: u64, message: &str| format!("{file}:{}:{}: {message}", line.max(1), column.max(1));
        let policy: PolicyFile = serde_saphyr::from_str(text).map_err(|error| {
            let (line, column) = error.location().map_or((1, 1), |at| (at.line(), at.column()));
            let message = error.without_snippet().to_string();
            let message = message.lines().next().unwrap_or("invalid YAML").to_owned();
            PolicyErrors(vec![located(line, column, &message)])
        })?;
        let mut errors: Vec<(u64, u64, String)> = Vec::new();
        let mut grants = HashMap::new();
        for (group, grant) in policy.groups {
            let at = grant.role.referenced;
            let role = Role::parse(&grant.role.value);
            if role.is_none() {
                errors.push((
                    at.line(),
                    at.column(),
                    format!("group `{group}`: role `{}` is not viewer, operator or admin", grant.role.value),
                ));
            }
            for team in &grant.teams {
                if !crate::config::is_tag(&team.value) {
                    errors.push((
                        team.referenced.line(),
                        team.referenced.column(),
                        format!(
                            "group `{group}`: `{}` is not a team name (letters, digits, `-`, `_` and `.`, at most 64)",
                            team.value
                        ),
                    ));
                }
            }
            if let Some(role) = role {
                grants.insert(group, (role, grant.teams.into_iter().map(|team| team.value).collect()));
            }
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(PolicyErrors(
                errors.into_iter().map(|(line, column, message)| located(line, column, &message)).collect(),
            ));
        }
        Ok(GroupPolicy { claim: policy.claim, scopes: policy.scopes, grants })
    }

    /// How many groups it grants a role.
    pub fn groups(&self) -> usize {
        self.grants.len()
    }

    /// The role and teams `groups` grant, if any.
    pub fn grant(&self, groups: &[String]) -> Option<(Role, Vec<String>)> {
        let granted: Vec<&(Role, Vec<String>)> = groups.iter().filter_map(|group| self.grants.get(group)).collect();
        let role = granted.iter().map(|(role, _)| *role).max()?;
        let at_role: Vec<&Vec<String>> =
            granted.iter().filter(|(granted, _)| *granted == role).map(|(_, teams)| teams).collect();
        if at_role.iter().any(|teams| teams.is_empty()) {
            return Some((role, Vec::new()));
        }
        let teams: BTreeSet<&String> = at_role.into_iter().flatten().collect();
        Some((role, teams.into_iter().cloned().collect()))
    }
}

/// The policy file's text, at most `MAX_POLICY_BYTES` of it.
pub fn read_policy(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| format!("cannot read the sign-in policy: {error}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read the sign-in policy: {error}"))?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(format!("the sign-in policy is larger than {MAX_POLICY_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "the sign-in policy is not valid UTF-8".to_owned())
}

/// The flags' settings (`--oidc-*`, `--session-ttl`).
#[derive(Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// The public client `tenure login` uses for the device grant, if any.
    pub cli_client_id: Option<String>,
    /// The policy as read at start; `policy_file` is where it is read again from (reloads).
    pub policy: GroupPolicy,
    pub policy_file: Option<PathBuf>,
    pub session_ttl: Duration,
    /// Where the provider sends the browser back: `--public-url` + `auth/callback`.
    pub redirect: url::Url,
}

/// Sign-in through the provider, for every handler: the settings, the policy in force (the last
/// good one read), the provider's metadata (discovered at the first sign-in, again after
/// `REDISCOVER`, and at once when no key it holds verifies an ID token, so a rotated key is
/// learnt by the next sign-in).
pub struct Oidc {
    settings: OidcSettings,
    policy: RwLock<Arc<GroupPolicy>>,
    http: reqwest::Client,
    discovered: tokio::sync::Mutex<Option<(Instant, Arc<Metadata>)>>,
    /// When the keys were last read again for a token none verified (`REKEY_AT_MOST_EVERY`).
    rekeyed: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.settings.issuer)
            .field("client_id", &self.settings.client_id)
            .finish()
    }
}

/// How long the provider's metadata and keys are used before they are read again.
const REDISCOVER: Duration = Duration::from_secs(600);
/// At most this often does an ID token that no known key verifies send the replica to the
/// provider for its keys again: a flood of forged tokens costs the provider one read each 10 s.
const REKEY_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// How long a sign-in may take at the provider.
const ATTEMPT_SECONDS: i64 = 600;

impl Oidc {
    pub fn new(settings: OidcSettings) -> anyhow::Result<Oidc> {
        Ok(Oidc {
            policy: RwLock::new(Arc::new(settings.policy.clone())),
            settings,
            http: provider_http_client()?,
            discovered: tokio::sync::Mutex::new(None),
            rekeyed: std::sync::Mutex::new(None),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<GroupPolicy> {
        self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The policy file, if it is read again (reloads).
    pub fn policy_file(&self) -> Option<&Path> {
        self.settings.policy_file.as_deref()
    }

    /// Put `policy` in force: the next sign-in is granted by it.
    pub fn set_policy(&self, policy: GroupPolicy) {
        *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
    }

    /// The provider's metadata read again because no key of `stale` verified an ID token (the
    /// provider may have rotated its key), unless that was done less than `REKEY_AT_MOST_EVERY`
    /// ago; what another sign-in read meanwhile, if it did. `None`: nothing newer.
    async fn rediscover(&self, stale: &Arc<Metadata>) -> Option<Arc<Metadata>> {
        let mut discovered = self.discovered.lock().await;
        if let Some((_, current)) = discovered.as_ref()
            && !Arc::ptr_eq(current, stale)
        {
            return Some(current.clone());
        }
        {
            let mut rekeyed = self.rekeyed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if rekeyed.is_some_and(|at| at.elapsed() < REKEY_AT_MOST_EVERY) {
                return None;
            }
            *rekeyed = Some(Instant::now());
        }
        match discover(&self.settings.issuer, &self.http).await {
            Ok(metadata) => {
                tracing::info!(
                    issuer = self.settings.issuer,
                    "no known key of the identity provider verifies an ID token; its keys read again"
                );
                let metadata = Arc::new(metadata);
                *discovered = Some((Instant::now(), metadata.clone()));
                Some(metadata)
            }
            Err(error) => {
                tracing::warn!(issuer = self.settings.issuer, error = %error, "the identity provider's discovery failed");
                None
            }
        }
    }

    /// `id_token`'s claims, verified by the client `client` makes of `metadata` (its keys) with
    /// `nonce`; when no key it knows verifies the token, verified once more with the provider's
    /// keys read again (`rediscover`), so a sign-in right after a key rotation succeeds.
    async fn verify<'t, N: NonceVerifier + Copy>(
        &self,
        id_token: &'t ProviderIdToken,
        metadata: Arc<Metadata>,
        client: impl Fn(&Metadata) -> OidcClient,
        nonce: N,
    ) -> Result<&'t IdTokenClaims<OtherClaims, CoreGenderClaim>, ClaimsVerificationError> {
        let verified = id_token.claims(&client(&metadata).id_token_verifier(), nonce);
        let unknown_key = matches!(
            &verified,
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey | SignatureVerificationError::CryptoError(_)
            ))
        );
        if !unknown_key {
            return verified;
        }
        match self.rediscover(&metadata).await {
            Some(fresh) => id_token.claims(&client(&fresh).id_token_verifier(), nonce),
            None => verified,
        }
    }

    async fn metadata(&self) -> Result<Arc<Metadata>, Problem> {
        let mut discovered = self.discovered.lock().await;
        if let Some((at, metadata)) = discovered.as_ref()
            && at.elapsed() < REDISCOVER
        {
            return Ok(metadata.clone());
        }
        match discover(&self.settings.issuer, &self.http).await {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                *discovered = Some((Instant::now(), metadata.clone()));
                Ok(metadata)
            }
            Err(error) => {
                tracing::warn!(issuer = self.settings.issuer, error = %error, "the identity provider's discovery failed");
                // Keys a little old beat no sign-in at all.
                match discovered.as_ref() {
                    Some((_, metadata)) => Ok(metadata.clone()),
                    None => Err(Problem::new(
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway",
                        "the identity provider does not answer; try again, or sign in with a token",
                    )),
                }
            }
        }
    }

    /// The web client (confidential: the client secret), sending the browser back to `redirect`.
    fn web_client(&self, metadata: &Metadata) -> OidcClient {
        OidcClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.expose().to_owned())),
        )
        .set_redirect_uri(RedirectUrl::from_url(self.settings.redirect.clone()))
    }

    /// The principal the verified `claims` stand for, under the policy; or why none.
    fn principal(&self, claims: &IdTokenClaims<OtherClaims, CoreGenderClaim>) -> Result<Session, String> {
        let policy = self.policy();
        let groups: Vec<String> = match claims.additional_claims().claims.get(&policy.claim) {
            Some(serde_json::Value::Array(values)) => {
                values.iter().filter_map(|value| value.as_str()).map(str::to_owned).collect()
            }
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let name = claims
            .preferred_username()
            .map(|name| name.as_str().to_owned())
            .or_else(|| claims.email().map(|email| email.as_str().to_owned()))
            .unwrap_or_else(|| claims.subject().as_str().to_owned());
        let Some((role, teams)) = policy.grant(&groups) else {
            return Err(format!(
                "{name}'s groups ({}) give no role in tenure: the sign-in policy names none of them",
                if groups.is_empty() {
                    "none in the `".to_owned() + &policy.claim + "` claim"
                } else {
                    groups.join(", ")
                }
            ));
        };
        let ttl = i64::try_from(self.settings.session_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        Ok(Session {
            sub: claims.subject().as_str().to_owned(),
            name,
            role,
            teams,
            expires: Utc::now().timestamp().saturating_add(ttl),
        })
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", post(logout))
        .route("/api/auth/oidc", get(cli_settings))
        .route("/api/auth/session", post(cli_session))
}

/// The provider and the key, or why sign-in through a provider is off.
fn configured(state: &AppState) -> Result<(&Arc<Oidc>, &session::SessionKey), Problem> {
    let oidc = state.auth.oidc.as_ref().ok_or_else(|| {
        Problem::not_found("sign-in through an identity provider is off (start tenure with --oidc-issuer)")
    })?;
    let key = state.auth.session_key.as_ref().ok_or_else(|| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", "the session key is not read yet")
    })?;
    Ok((oidc, key))
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    back: Option<String>,
}

/// A path of this site to go back to after signing in: never another site, never `//host`.
fn local_path(back: Option<&str>) -> String {
    match back {
        Some(path)
            if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') && path.len() < 2_000 =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// `GET /auth/login`: off to the provider, the sign-in's state, nonce and PKCE verifier in a
/// signed cookie for the callback (whichever replica it reaches).
async fn login(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Result<Response, PageError> {
    let (oidc, key) = configured(&state)?;
    let metadata = oidc.metadata().await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = oidc.web_client(&metadata);
    let mut request = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scope(Scope::new("profile".to_owned()))
        .add_scope(Scope::new("email".to_owned()))
        .set_pkce_challenge(challenge);
    for scope in &oidc.policy().scopes {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, csrf, nonce) = request.url();
    let attempt = Attempt {
        state: csrf.secret().clone(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        back: local_path(query.back.as_deref()),
        expires: Utc::now().timestamp() + ATTEMPT_SECONDS,
    };
    let cookie = session::set_cookie(
        session::SIGNIN_COOKIE,
        &key.seal_attempt(&attempt),
        ATTEMPT_SECONDS,
        state.auth.served.https(),
    );
    let mut response = Redirect::to(url.as_str()).into_response();
    response.headers_mut().insert(header::SET_COOKIE, header_value(&cookie));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(Debug, Default, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// A refused sign-in: audited, answered 403 (the sign-in's cookie cleared).
async fn refuse(state: &AppState, caller: &Caller, detail: String) -> PageError {
    state.record_refusal(caller.audit(Action::SignIn, None, AuditOutcome::Refused, detail.clone())).await;
    PageError(Problem::new(StatusCode::FORBIDDEN, "Forbidden", detail))
}

/// `GET /auth/callback`: the provider's answer. Refused unless the sign-in cookie is this
/// cluster's and current, the state is the one sent, the code is exchanged (with the verifier),
/// and the ID token is the provider's, for this client, unexpired, with this sign-in's nonce.
async fn callback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<CallbackQuery>,
) -> Result<Response, PageError> {
    let (oidc, key) = configured(&state)?;
    let secure = state.auth.served.https();
    let clear = session::set_cookie(session::SIGNIN_COOKIE, "", 0, secure);
    let now = Utc::now().timestamp();
    let result = async {
        let attempt = match session::cookie(&headers, session::SIGNIN_COOKIE).map(|text| key.open_attempt(text, now)) {
            Some(Ok(attempt)) => attempt,
            Some(Err(refused)) => {
                return Err(refuse(
                    &state,
                    &caller,
                    format!("sign-in refused: the sign-in's cookie is not valid ({refused}); start again"),
                )
                .await);
            }
            None => {
                return Err(refuse(
                    &state,
                    &caller,
                    "sign-in refused: no sign-in was started in this browser; start again".to_owned(),
                )
                .await);
            }
        };
        // Compare digests: the time taken says nothing about the expected state.
        use sha2::Digest;
        let sent = query.state.as_deref().unwrap_or_default();
        if sha2::Sha256::digest(sent) != sha2::Sha256::digest(&attempt.state) {
            return Err(refuse(
                &state,
                &caller,
                "sign-in refused: the answer's state is not this sign-in's (forged or replayed)".to_owned(),
            )
            .await);
        }
        if let Some(error) = &query.error {
            let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(100).collect();
            return Err(refuse(&state, &caller, format!("sign-in refused by the identity provider: {error}")).await);
        }
        let Some(code) = query.code.clone() else {
            return Err(refuse(&state, &caller, "sign-in refused: the answer carries no code".to_owned()).await);
        };
        let metadata = oidc.metadata().await?;
        let client = oidc.web_client(&metadata);
        let exchange = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|error| {
                Problem::internal(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway",
                    "the identity provider has no token endpoint",
                    &error,
                )
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(attempt.verifier.clone()));
        let tokens = match exchange.request_async(&oidc.http).await {
            Ok(tokens) => tokens,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "the identity provider refused a code");
                return Err(refuse(
                    &state,
                    &caller,
                    "sign-in refused: the identity provider did not take the code (used already, or expired)"
                        .to_owned(),
                )
                .await);
            }
        };
        let Some(id_token) = openidconnect::TokenResponse::id_token(&tokens) else {
            return Err(
                refuse(&state, &caller, "sign-in refused: the identity provider sent no ID token".to_owned()).await
            );
        };
        let nonce = Nonce::new(attempt.nonce.clone());
        let claims = match oidc.verify(id_token, metadata, |metadata| oidc.web_client(metadata), &nonce).await {
            Ok(claims) => claims,
            Err(error) => {
                return Err(
                    refuse(&state, &caller, format!("sign-in refused: the ID token is not valid ({error})")).await
                );
            }
        };
        let session = match oidc.principal(claims) {
            Ok(session) => session,
            Err(why) => return Err(refuse(&state, &caller, format!("sign-in refused: {why}")).await),
        };
        Ok((session, attempt.back))
    }
    .await;
    let (session, back) = match result {
        Ok(done) => done,
        Err(error) => {
            let mut response = error.into_response();
            response.headers_mut().append(header::SET_COOKIE, header_value(&clear));
            return Ok(response);
        }
    };
    signed_in(&state, &caller, &session).await;
    let max_age = session.expires - now;
    let cookie = session::set_cookie(session::IDENTITY_COOKIE, &key.seal_session(&session), max_age, secure);
    let mut response = Redirect::to(&back).into_response();
    response.headers_mut().append(header::SET_COOKIE, header_value(&cookie));
    response.headers_mut().append(header::SET_COOKIE, header_value(&clear));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Audit a sign-in under the principal it made.
async fn signed_in(state: &AppState, caller: &Caller, session: &Session) {
    let mut now = caller.clone();
    now.principal = session.principal();
    let detail = format!(
        "signed in through {} until {}",
        state.auth.oidc.as_ref().map_or("", |oidc| oidc.settings.issuer.as_str()),
        session.expires
    );
    state.record_refusal(now.audit(Action::SignIn, None, AuditOutcome::Done, detail)).await;
}

impl Session {
    /// The principal a session stands for.
    pub fn principal(&self) -> Principal {
        Principal { name: self.name.clone(), role: Some(self.role), teams: self.teams.clone(), via: Via::Session }
    }
}

#[derive(Debug, Default, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /auth/logout`: the session cookie cleared (a form of this site: origin and
/// anti-forgery value checked, so no other site signs anyone out).
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Result<Response, PageError> {
    state.auth.same_origin(&headers)?;
    state.auth.form_value(&headers, &form.csrf)?;
    let clear = session::set_cookie(session::IDENTITY_COOKIE, "", 0, state.auth.served.https());
    // A page of its own, not the overview: where reads need a sign-in, the overview would send
    // the browser straight back to the provider, which may still know them.
    let page = "<!doctype html><html lang=en><meta charset=utf-8><title>Signed out · tenure</title>\
                <link rel=stylesheet href=/static/app.css><main><h1 id=signed-out>Signed out</h1>\
                <p><a href=\"/auth/login\">Sign in again</a> · <a href=\"/\">Overview</a></p></main>";
    let mut response = axum::response::Html(page).into_response();
    response.headers_mut().insert(header::SET_COOKIE, header_value(&clear));
    Ok(response)
}

/// `GET /api/auth/oidc`: where `tenure login` signs in (the issuer and the CLI's client id).
#[derive(Debug, Serialize, Deserialize)]
pub struct CliSettings {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

async fn cli_settings(State(state): State<AppState>) -> Result<Json<CliSettings>, Problem> {
    let (oidc, _) = configured(&state)?;
    let client_id = oidc.settings.cli_client_id.clone().ok_or_else(|| {
        Problem::not_found(
            "the CLI cannot sign in through the identity provider: start tenure with --oidc-cli-client-id",
        )
    })?;
    let mut scopes = vec!["openid".to_owned(), "profile".to_owned(), "email".to_owned()];
    scopes.extend(oidc.policy().scopes.iter().cloned());
    Ok(Json(CliSettings { issuer: oidc.settings.issuer.clone(), client_id, scopes }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    id_token: String,
}

/// `POST /api/auth/session`'s answer: the session token, and whom it stands for.
#[derive(Debug, Serialize)]
pub struct CliSession {
    pub token: String,
    pub principal: Principal,
    pub expires_at: chrono::DateTime<Utc>,
}

/// `POST /api/auth/session` `{"id_token": "..."}`: an ID token the provider issued to the CLI's
/// client (device grant), verified as the callback verifies one (no nonce: the device grant has
/// none), turned into a session token.
async fn cli_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Json<CliSession>, Problem> {
    let (oidc, key) = configured(&state)?;
    let Some(cli_client_id) = oidc.settings.cli_client_id.clone() else {
        return Err(Problem::not_found(
            "the CLI cannot sign in through the identity provider: start tenure with --oidc-cli-client-id",
        ));
    };
    let body: SessionBody = serde_json::from_slice(&body)
        .map_err(|error| Problem::bad_request(format!("expected {{\"id_token\": \"...\"}}: {error}")))?;
    let refused = async |detail: String| {
        state.record_refusal(caller.audit(Action::SignIn, None, AuditOutcome::Refused, detail.clone())).await;
        Problem::unauthorized(&detail)
    };
    let id_token: ProviderIdToken = match body.id_token.parse() {
        Ok(token) => token,
        Err(_) => return Err(refused("sign-in refused: not an ID token".to_owned()).await),
    };
    let metadata = oidc.metadata().await?;
    let client = |metadata: &Metadata| {
        OidcClient::from_provider_metadata(metadata.clone(), ClientId::new(cli_client_id.clone()), None)
    };
    let no_nonce = |_: Option<&Nonce>| -> Result<(), String> { Ok(()) };
    let claims = match oidc.verify(&id_token, metadata, client, no_nonce).await {
        Ok(claims) => claims,
        Err(error) => return Err(refused(format!("sign-in refused: the ID token is not valid ({error})")).await),
    };
    let session = match oidc.principal(claims) {
        Ok(session) => session,
        Err(why) => return Err(refused(format!("sign-in refused: {why}")).await),
    };
    signed_in(&state, &caller, &session).await;
    Ok(Json(CliSession {
        token: format!("{}{}", session::SESSION_PREFIX, key.seal_session(&session)),
        principal: session.principal(),
        expires_at: chrono::DateTime::from_timestamp(session.expires, 0).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_give_the_highest_role_and_the_teams_of_its_groups() {
        let policy = GroupPolicy::parse(
            "groups:\n  admins: { role: admin }\n  pay-oncall: { role: operator, teams: [payments] }\n  \
             search-oncall: { role: operator, teams: [search] }\n  staff: { role: viewer }\n",
            "policy.yaml",
        )
        .unwrap();
        let groups = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
        assert_eq!(policy.grant(&groups(&["staff"])), Some((Role::Viewer, vec![])));
        assert_eq!(
            policy.grant(&groups(&["staff", "search-oncall", "pay-oncall"])),
            Some((Role::Operator, vec!["payments".into(), "search".into()]))
        );
        assert_eq!(policy.grant(&groups(&["pay-oncall", "admins"])), Some((Role::Admin, vec![])));
        assert_eq!(policy.grant(&groups(&["contractors"])), None);
        assert_eq!(policy.claim, "groups");
    }

    /// The errors of a policy file (as `policy.yaml`), each `file:line:column: message`.
    fn policy_errors(text: &str) -> Vec<String> {
        match GroupPolicy::parse(text, "policy.yaml") {
            Ok(_) => panic!("expected errors in:\n{text}"),
            Err(errors) => errors.0,
        }
    }

    #[test]
    fn policy_errors_are_located_by_file_line_and_column() {
        let wrong_role = policy_errors("groups:\n  staff: { role: viewer }\n  x: { role: owner }\n");
        assert_eq!(wrong_role, ["policy.yaml:3:14: group `x`: role `owner` is not viewer, operator or admin"]);
        let bad_team = policy_errors("groups:\n  ops:\n    role: operator\n    teams: [payments, 'pay ments']\n");
        assert_eq!(
            bad_team,
            [
                "policy.yaml:4:23: group `ops`: `pay ments` is not a team name (letters, digits, `-`, `_` and `.`, at most 64)"
            ]
        );
        let too_long = policy_errors(&format!("groups:\n  ops: {{ role: operator, teams: [{}] }}\n", "t".repeat(65)));
        assert!(too_long[0].starts_with("policy.yaml:2:"), "{too_long:?}");
        assert!(too_long[0].contains("is not a team name"), "{too_long:?}");
        // Several, in file order whatever the map's order.
        let both = policy_errors("groups:\n  a: { role: root }\n  b: { role: viewer, teams: [x/y] }\n");
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[0].starts_with("policy.yaml:2:") && both[1].starts_with("policy.yaml:3:"), "{both:?}");
        let unknown_field = policy_errors("claim: groups\ngroups:\n  staff: { role: viewer, team: [x] }\n");
        assert_eq!(unknown_field.len(), 1);
        assert!(unknown_field[0].starts_with("policy.yaml:3:"), "{unknown_field:?}");
        assert!(unknown_field[0].contains("team"), "{unknown_field:?}");
        let unknown_top = policy_errors("claims: groups\ngroups: {}\n");
        assert!(unknown_top[0].starts_with("policy.yaml:1:") && unknown_top[0].contains("claims"), "{unknown_top:?}");
        let syntax = policy_errors("groups:\n  staff: { role: viewer\n  ops: [\n");
        assert_eq!(syntax.len(), 1);
        assert!(syntax[0].starts_with("policy.yaml:") && !syntax[0].starts_with("policy.yaml:1:1:"), "{syntax:?}");
        let missing = GroupPolicy::load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
        assert!(missing.to_string().starts_with("/nonexistent/policy.yaml:1:1: cannot read"), "{missing}");
    }

    #[test]
    fn only_a_path_of_this_site_is_gone_back_to() {
        assert_eq!(local_path(Some("/jobs/pay")), "/jobs/pay");
        for hostile in ["//evil.example/x", "https://evil.example/", "/\\evil", "jobs"] {
            assert_eq!(local_path(Some(hostile)), "/", "{hostile}");
        }
    }
}
