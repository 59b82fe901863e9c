//! Credentials and their use: environment mode or a profile (the official client's
//! precedence), the refresh rule (no access token, or it expires within 300 s), where refreshed
//! tokens go (the profile only; environment credentials never touch the disk), and the GraphQL
//! and `/auth/*` calls that need them.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use prism_proto::wire::{OAuthErrorBody, TokenResponse};
use serde_json::{Value, json};

use crate::config::{self, Config, Profile};
use crate::env;
use crate::error::{Error, Result};
use crate::expiry;
use crate::http::Http;

/// Refresh when the access token expires within this many seconds.
pub const REFRESH_MARGIN_SECS: u64 = 300;

/// What every command shares: HTTP and the global flags.
pub struct Ctx {
    pub http: Http,
    /// `--profile`, else `PRISM_PROFILE`.
    pub profile: Option<String>,
    pub quiet: bool,
}

impl Ctx {
    /// Prints an informational line on stdout unless `--quiet`.
    pub fn say(&self, line: &str) {
        if !self.quiet {
            println!("{line}");
        }
    }
}

/// `GET {PRISMATIC_URL}/auth/meta`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub domain: String,
    pub client_id: String,
    #[serde(default)]
    pub audience: String,
}

impl Meta {
    pub fn fetch(http: &Http, url: &str) -> Result<Self> {
        let meta_url = format!("{url}/auth/meta");
        let reply = http.get(&meta_url)?;
        if reply.status != 200 {
            return Err(Error::new(format!(
                "{meta_url} answered HTTP {}: is PRISMATIC_URL ({url}) a prism-auth or Prismatic server?",
                reply.status
            )));
        }
        serde_json::from_str(&reply.body).map_err(|e| {
            Error::new(format!(
                "{meta_url} did not return the expected JSON ({e}): is PRISMATIC_URL right?"
            ))
        })
    }

    /// `https://{domain}{path}`: the auth server is always reached over HTTPS.
    pub fn auth_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.domain)
    }

    /// `POST https://{domain}/oauth/token` with a form: the tokens, or the OAuth error body.
    pub fn token_call(
        &self,
        http: &Http,
        form: &[(&str, &str)],
    ) -> Result<std::result::Result<TokenResponse, OAuthErrorBody>> {
        let url = self.auth_url("/oauth/token");
        let reply = http.post_form(&url, form)?;
        if reply.status == 200 {
            return serde_json::from_str(&reply.body).map(Ok).map_err(|e| {
                Error::new(format!("{url} returned an unexpected token response: {e}"))
            });
        }
        serde_json::from_str::<OAuthErrorBody>(&reply.body)
            .map(Err)
            .map_err(|_| Error::new(format!("{url} answered HTTP {}", reply.status)))
    }

    /// `grant_type=refresh_token`, with `tenant_id` when one is given. `access_denied` (a
    /// tenant the identity is not a member of) is the official client's message; other OAuth
    /// errors come back as `Ok(Err(body))`. Every refresh of the CLI comes through here, so
    /// this is where a refresh token that expires soon is noticed (a warning on stderr).
    pub fn refresh(
        &self,
        http: &Http,
        refresh_token: &str,
        tenant: Option<&str>,
    ) -> Result<std::result::Result<TokenResponse, OAuthErrorBody>> {
        let form = refresh_form(&self.client_id, refresh_token, tenant);
        match self.token_call(http, &form)? {
            Err(body) if body.error == "access_denied" => {
                Err(access_denied(tenant, &body.error_description))
            }
            Ok(tokens) => {
                expiry::warn_if_expiring(tokens.refresh_token_expires_in);
                Ok(Ok(tokens))
            }
            other => Ok(other),
        }
    }

    /// Like [`Meta::token_call`], with an OAuth error turned into `error: description`.
    pub fn token_request(&self, http: &Http, form: &[(&str, &str)]) -> Result<TokenResponse> {
        self.token_call(http, form)?
            .map_err(|body| Error::new(format!("{}: {}", body.error, body.error_description)))
    }
}

/// The form of a refresh: `grant_type=refresh_token&client_id=..&refresh_token=..`, and
/// `&tenant_id=..` when a (non-empty) tenant is given.
pub fn refresh_form<'a>(
    client_id: &'a str,
    refresh_token: &'a str,
    tenant: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("refresh_token", refresh_token),
    ];
    if let Some(tenant) = tenant.filter(|t| !t.is_empty()) {
        form.push(("tenant_id", tenant));
    }
    form
}

/// The official client's message for an `access_denied` refresh.
pub fn access_denied(tenant: Option<&str>, description: &str) -> Error {
    let description = if description.is_empty() {
        "You do not have access to the specified tenant."
    } else {
        description
    };
    match tenant.filter(|t| !t.is_empty()) {
        Some(tenant) => Error::new(format!(
            "Access denied for tenant ID '{tenant}'. {description}"
        )),
        None => Error::new(format!("Access denied. {description}")),
    }
}

/// A GraphQL response with `data`.
pub struct GraphqlAnswer {
    pub data: Value,
    /// The messages of its `errors`, for fields that came back `null`.
    pub errors: Vec<String>,
}

impl GraphqlAnswer {
    /// The value at `path` in `data`, or an error with the server's reasons for its absence
    /// (`missing` when the server gave none, e.g. a server without that field).
    pub fn required(&self, path: &[&str], missing: &str) -> Result<&Value> {
        let value = path.iter().fold(&self.data, |value, key| &value[*key]);
        if !value.is_null() {
            return Ok(value);
        }
        if self.errors.is_empty() {
            Err(Error::new(missing))
        } else {
            Err(Error::new(self.errors.join("\n")))
        }
    }
}

/// Where the credentials of this run come from.
pub enum Source {
    Environment,
    Profile {
        name: String,
        path: PathBuf,
        config: Config,
    },
}

pub struct Session {
    pub url: String,
    pub source: Source,
    pub access: Option<String>,
    pub refresh: Option<String>,
    pub tenant_id: Option<String>,
    meta: Option<Meta>,
}

/// `PRISMATIC_URL` without a trailing slash.
pub fn normalize_url(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// The API URL for commands that do not use a profile's: `PRISMATIC_URL` or the default.
pub fn env_url() -> String {
    normalize_url(&env::var(env::PRISMATIC_URL).unwrap_or_else(|| env::DEFAULT_URL.to_owned()))
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// The `exp` claim of a JWT, read without checking the signature.
pub fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = &claims["exp"];
    exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Session {
    /// Environment credentials when `PRISM_ACCESS_TOKEN` or `PRISM_REFRESH_TOKEN` is set,
    /// otherwise the selected profile.
    pub fn resolve(ctx: &Ctx) -> Result<Self> {
        let access = env::var(env::PRISM_ACCESS_TOKEN);
        let refresh = env::var(env::PRISM_REFRESH_TOKEN);
        if access.is_some() || refresh.is_some() {
            return Ok(Self {
                url: env_url(),
                source: Source::Environment,
                access,
                refresh,
                tenant_id: env::var(env::PRISMATIC_TENANT_ID),
                meta: None,
            });
        }
        let path = config::path()?;
        let Some(config) = config::load(&path)? else {
            return Err(Error::not_logged_in());
        };
        let name = config.selected_name(ctx.profile.as_deref());
        if !config.profiles.contains_key(&name) {
            if ctx.profile.is_some() {
                return Err(Error::new(format!(
                    "Profile '{name}' does not exist: run 'prism login --profile {name}' or 'prism profiles:list'."
                )));
            }
            return Err(Error::not_logged_in());
        }
        Self::from_profile(name, path, config)
    }

    /// Profile mode with profile `name` of `config` (which must contain it).
    pub fn from_profile(name: String, path: PathBuf, config: Config) -> Result<Self> {
        let profile = config
            .profiles
            .get(&name)
            .cloned()
            .ok_or_else(Error::not_logged_in)?;
        // A profile without a URL (the older flat layout) uses PRISMATIC_URL or the default.
        let url = match profile.prismatic_url.as_deref() {
            Some(url) => normalize_url(url),
            None => env_url(),
        };
        if let Some(from_env) = env::var(env::PRISMATIC_URL)
            && normalize_url(&from_env) != url
        {
            return Err(Error::new(format!(
                "PRISMATIC_URL does not match profile '{name}'."
            )));
        }
        // As in the official client, a profile refreshes with its own tenant;
        // PRISMATIC_TENANT_ID is for environment credentials and for choosing one at login.
        if let Some(from_env) = env::var(env::PRISMATIC_TENANT_ID)
            && profile.tenant_id.as_deref() != Some(from_env.as_str())
        {
            let uses = match profile.tenant_id.as_deref() {
                Some(tenant) => format!("which uses tenant '{tenant}'"),
                None => "which has no tenant ID".to_owned(),
            };
            eprintln!(
                "Warning: PRISMATIC_TENANT_ID ('{from_env}') is not used with profile '{name}', \
                 {uses}; run 'prism login -f' with it set to switch the profile."
            );
        }
        Ok(Self {
            url,
            access: non_empty(&profile.access_token),
            refresh: non_empty(&profile.refresh_token),
            tenant_id: profile.tenant_id.clone(),
            source: Source::Profile { name, path, config },
            meta: None,
        })
    }

    /// Fresh tokens that are not saved anywhere (during login), for `tenant` when the login
    /// switched to one.
    pub fn transient(url: &str, tokens: &TokenResponse, meta: Meta, tenant: Option<&str>) -> Self {
        Self {
            url: url.to_owned(),
            source: Source::Environment,
            access: Some(tokens.access_token.clone()),
            refresh: tokens.refresh_token.clone(),
            tenant_id: tenant.map(str::to_owned),
            meta: Some(meta),
        }
    }

    pub fn profile_name(&self) -> Option<&str> {
        match &self.source {
            Source::Profile { name, .. } => Some(name),
            Source::Environment => None,
        }
    }

    pub fn meta(&mut self, http: &Http) -> Result<&Meta> {
        if self.meta.is_none() {
            self.meta = Some(Meta::fetch(http, &self.url)?);
        }
        self.meta
            .as_ref()
            .ok_or_else(|| Error::new("the server's metadata is missing"))
    }

    /// Whether the access token must be refreshed before use.
    pub fn needs_refresh(&self) -> bool {
        match (&self.access, &self.refresh) {
            (None, Some(_)) => true,
            (Some(access), Some(_)) => {
                jwt_exp(access).is_none_or(|exp| exp < now() + REFRESH_MARGIN_SECS)
            }
            _ => false,
        }
    }

    /// A usable access token, refreshing first when needed.
    pub fn access_token(&mut self, ctx: &Ctx) -> Result<String> {
        if self.needs_refresh() {
            self.refresh_now(ctx)?;
        }
        self.access.clone().ok_or_else(Error::not_logged_in)
    }

    /// Exchanges the refresh token at `https://{domain}/oauth/token`; in profile mode the new
    /// access token is saved.
    pub fn refresh_now(&mut self, ctx: &Ctx) -> Result<()> {
        let refresh = self.refresh.clone().ok_or_else(Error::not_logged_in)?;
        let tenant = self.tenant_id.clone();
        let meta = self.meta(&ctx.http)?.clone();
        let response = match meta.refresh(&ctx.http, &refresh, tenant.as_deref())? {
            Ok(response) => response,
            Err(body) => {
                let what = match self.source {
                    Source::Environment => "check PRISM_REFRESH_TOKEN",
                    Source::Profile { .. } => "run 'prism login' to sign in again",
                };
                return Err(Error::new(format!(
                    "Could not refresh the access token ({}: {}); {what}.",
                    body.error, body.error_description
                )));
            }
        };
        self.access = Some(response.access_token.clone());
        let rotated = response.refresh_token.filter(|r| !r.is_empty());
        if let Some(rotated) = &rotated {
            self.refresh = Some(rotated.clone());
        }
        if let Source::Profile { name, path, config } = &mut self.source {
            if let Some(profile) = config.profiles.get_mut(name.as_str()) {
                profile.access_token = response.access_token;
                profile.expires_in = response.expires_in;
                profile.scope = response.scope;
                profile.token_type = response.token_type;
                if let Some(rotated) = rotated {
                    profile.refresh_token = rotated;
                }
            }
            config::save(path, config)?;
        }
        Ok(())
    }

    /// Runs a GraphQL document; returns its `data`.
    pub fn graphql(&mut self, ctx: &Ctx, query: &str, variables: Value) -> Result<Value> {
        self.graphql_answer(ctx, query, variables)
            .map(|answer| answer.data)
    }

    /// Runs a GraphQL document; returns its `data` with the messages of the `errors` that came
    /// with it. A field the token may not read is `null` in `data` with its reason in
    /// `errors`, so commands that need such a field say why it is missing.
    pub fn graphql_answer(
        &mut self,
        ctx: &Ctx,
        query: &str,
        variables: Value,
    ) -> Result<GraphqlAnswer> {
        let token = self.access_token(ctx)?;
        let url = format!("{}/api", self.url);
        let shown = format!("{query}\nvariables: {variables}");
        let body = json!({ "query": query, "variables": variables });
        let reply = ctx
            .http
            .post_json(&url, &body, Some(&token), Some(&shown))?;
        if reply.status == 401 {
            return Err(Error::new(
                "Not authenticated. Run 'prism login' or select another profile.",
            ));
        }
        let parsed: Value = serde_json::from_str(&reply.body).map_err(|_| {
            Error::new(format!(
                "{url} answered HTTP {} with a body that is not JSON.",
                reply.status
            ))
        })?;
        if reply.status != 200 {
            let description = parsed["error_description"]
                .as_str()
                .or(parsed["errors"][0]["message"].as_str())
                .unwrap_or("no details");
            return Err(Error::new(format!(
                "{url} answered HTTP {}: {description}",
                reply.status
            )));
        }
        match parsed.get("data") {
            Some(data) if !data.is_null() => Ok(GraphqlAnswer {
                data: data.clone(),
                errors: parsed["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|error| error["message"].as_str().map(str::to_owned))
                    .collect(),
            }),
            _ => Err(Error::new(
                parsed["errors"][0]["message"]
                    .as_str()
                    .unwrap_or("the server returned no data")
                    .to_owned(),
            )),
        }
    }

    /// `POST {PRISMATIC_URL}/auth/revoke`: revokes all refresh tokens of the user.
    pub fn revoke_all(&self, ctx: &Ctx) -> Result<()> {
        let refresh = self.refresh.as_deref().ok_or_else(|| {
            Error::new(
                "Revoking needs a refresh token: set PRISM_REFRESH_TOKEN or use a profile from 'prism login'.",
            )
        })?;
        let url = format!("{}/auth/revoke", self.url);
        let reply = ctx
            .http
            .post_json(&url, &json!({ "refresh_token": refresh }), None, None)?;
        if reply.status != 200 {
            return Err(Error::new(format!(
                "{url} answered HTTP {}: the tokens may not be revoked.",
                reply.status
            )));
        }
        Ok(())
    }

    /// Removes this session's profile from the config file (profile mode only).
    pub fn delete_profile(&mut self) -> Result<()> {
        if let Source::Profile { name, path, config } = &mut self.source {
            config.profiles.remove(name.as_str());
            if config.default_profile.as_deref() == Some(name.as_str()) {
                config.default_profile = None;
            }
            config::save(path, config)?;
        }
        Ok(())
    }
}

/// A new profile from a token response.
pub fn profile_from(response: TokenResponse, url: &str, tenant_id: Option<String>) -> Profile {
    Profile {
        access_token: response.access_token,
        expires_in: response.expires_in,
        refresh_token: response.refresh_token.unwrap_or_default(),
        scope: response.scope,
        token_type: response.token_type,
        tenant_id,
        prismatic_url: Some(url.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_without_verifying() -> Result<()> {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1234}"#);
        assert_eq!(jwt_exp(&format!("x.{payload}.y")), Some(1234));
        assert_eq!(jwt_exp("not-a-jwt"), None);
        Ok(())
    }

    #[test]
    fn refresh_form_carries_a_tenant_only_when_given() {
        let base = [
            ("grant_type", "refresh_token"),
            ("client_id", "prism-cli"),
            ("refresh_token", "rt"),
        ];
        assert_eq!(refresh_form("prism-cli", "rt", None), base.to_vec());
        assert_eq!(refresh_form("prism-cli", "rt", Some("")), base.to_vec());
        let mut with_tenant = base.to_vec();
        with_tenant.push(("tenant_id", "t-2"));
        assert_eq!(refresh_form("prism-cli", "rt", Some("t-2")), with_tenant);
    }

    #[test]
    fn access_denied_reads_like_the_official_client() {
        assert_eq!(
            access_denied(Some("t-9"), "not a member").to_string(),
            "Access denied for tenant ID 't-9'. not a member"
        );
        assert_eq!(
            access_denied(None, "").to_string(),
            "Access denied. You do not have access to the specified tenant."
        );
    }
}
