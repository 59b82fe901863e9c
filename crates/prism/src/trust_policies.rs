//! `trust-policies:*` (a prism-auth addition): the organization's trust policies, which let
//! CI pipelines exchange their OIDC tokens for a service account's access tokens, listed,
//! created, updated and deleted through the GraphQL API.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::commands::{
    LIST_SERVICE_ACCOUNTS, cell, payload_errors, payload_errors_pointing_to, words,
};
use crate::error::{Error, Result};
use crate::fail;
use crate::session::{Ctx, Session};
use crate::table::{self, Column, TableFlags};

pub const LIST: &str = "query listTrustPolicies { trustPolicies { id name description issuer audience conditions { claim match value } serviceAccount { id name } scopes accessTokenLifetimeSeconds maxTokenAgeSeconds enabled createdAt updatedAt lastUsedAt } }";
pub const CREATE: &str = "mutation createTrustPolicy($input: CreateTrustPolicyInput!) { createTrustPolicy(input: $input) { trustPolicy { id name } errors { field messages } } }";
pub const UPDATE: &str = "mutation updateTrustPolicy($input: UpdateTrustPolicyInput!) { updateTrustPolicy(input: $input) { trustPolicy { id name } errors { field messages } } }";
pub const DELETE: &str = "mutation deleteTrustPolicy($id: ID!) { deleteTrustPolicy(id: $id) { deleted errors { field messages } } }";

/// `--claim`/`--claim-glob`: `CLAIM=VALUE`, split at the first `=` (values may hold more).
pub fn parse_claim(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((claim, value)) if !claim.is_empty() => Ok((claim.to_owned(), value.to_owned())),
        _ => Err(
            "expected CLAIM=VALUE, e.g. sub=repo:acme/app:ref:refs/heads/main or \
             ref=refs/heads/release/*"
                .to_owned(),
        ),
    }
}

/// `--lifetime`/`--max-token-age`: a humantime duration (`1h`, `90m`) in whole seconds, as
/// the GraphQL `Int` takes it; the server checks the range.
pub fn parse_seconds(text: &str) -> std::result::Result<i64, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration such as 1h or 15m)"))?;
    i32::try_from(duration.as_secs())
        .map(i64::from)
        .map_err(|_| "that duration is too long".to_owned())
}

/// The flags `trust-policies:create` and `:update` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuleFlags {
    /// A condition: the token's claim must equal VALUE exactly (repeatable; all must hold;
    /// on update, the conditions given replace all)
    #[arg(long = "claim", value_name = "CLAIM=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, String)>,
    /// A condition: the claim must match PATTERN (`*` any run of characters, `?` one)
    /// (repeatable)
    #[arg(long = "claim-glob", value_name = "CLAIM=PATTERN", value_parser = parse_claim)]
    pub claim_globs: Vec<(String, String)>,
    /// Restrict the issued access tokens to this scope (repeatable; held by the service
    /// account); without any, they may do all its role allows
    #[arg(short, long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// How long an issued access token lives, e.g. 15m or 1h (default 1h)
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub lifetime: Option<i64>,
    /// How old (since its `iat`) an OIDC token may be, e.g. 10m (default 1h)
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub max_token_age: Option<i64>,
    /// What the policy is for
    #[arg(short, long)]
    pub description: Option<String>,
}

impl RuleFlags {
    /// The conditions as `ClaimConditionInput`s: exact ones, then globs.
    fn conditions(&self) -> Vec<Value> {
        let exact = self.claims.iter().map(|c| (c, "EXACT"));
        let glob = self.claim_globs.iter().map(|c| (c, "GLOB"));
        exact
            .chain(glob)
            .map(|((claim, value), kind)| json!({ "claim": claim, "match": kind, "value": value }))
            .collect()
    }

    /// Puts the fields that were given into `input` (an absent one stays absent, not null:
    /// on update, absent means unchanged).
    fn fill(&self, input: &mut Map<String, Value>) {
        if !self.claims.is_empty() || !self.claim_globs.is_empty() {
            input.insert("conditions".into(), self.conditions().into());
        }
        if !self.scopes.is_empty() {
            input.insert("scopes".into(), json!(self.scopes));
        }
        if let Some(seconds) = self.lifetime {
            input.insert("accessTokenLifetimeSeconds".into(), seconds.into());
        }
        if let Some(seconds) = self.max_token_age {
            input.insert("maxTokenAgeSeconds".into(), seconds.into());
        }
        if let Some(description) = &self.description {
            input.insert("description".into(), description.clone().into());
        }
    }
}

/// `trust-policies:create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateFlags {
    /// Name, unique among your organization's trust policies
    #[arg(short, long)]
    pub name: String,
    /// The tokens' issuer (`iss`), exactly, e.g. https://token.actions.githubusercontent.com
    #[arg(long, value_name = "URL")]
    pub issuer: String,
    /// The audience the tokens must carry (one of their `aud` values)
    #[arg(long, value_name = "AUD")]
    pub audience: String,
    /// The service account the access tokens are for: its id or name (see
    /// service-accounts:list)
    #[arg(long, value_name = "ID_OR_NAME")]
    pub service_account: String,
    #[command(flatten)]
    pub rules: RuleFlags,
    /// Create it disabled (it accepts no token until enabled)
    #[arg(long)]
    pub disabled: bool,
}

/// `trust-policies:update`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateFlags {
    /// Id of the trust policy (see trust-policies:list)
    pub id: String,
    /// New name
    #[arg(short, long)]
    pub name: Option<String>,
    /// New issuer
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// New audience
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
    /// Another service account (id or name)
    #[arg(long, value_name = "ID_OR_NAME")]
    pub service_account: Option<String>,
    #[command(flatten)]
    pub rules: RuleFlags,
    /// Remove the scope restriction: issued tokens may do all the service account's role
    /// allows
    #[arg(long, conflicts_with = "scopes")]
    pub all_scopes: bool,
    /// Accept tokens again
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Accept no token (and end the access tokens it issued)
    #[arg(long)]
    pub disable: bool,
}

const COLUMNS: &[Column] = &[
    Column {
        key: "id",
        header: "Id",
        extended: false,
    },
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "issuer",
        header: "Issuer",
        extended: false,
    },
    Column {
        key: "audience",
        header: "Audience",
        extended: false,
    },
    Column {
        key: "conditions",
        header: "Conditions",
        extended: false,
    },
    Column {
        key: "serviceAccount",
        header: "Service Account",
        extended: false,
    },
    Column {
        key: "scopes",
        header: "Scopes",
        extended: false,
    },
    Column {
        key: "lifetime",
        header: "Lifetime",
        extended: true,
    },
    Column {
        key: "maxTokenAge",
        header: "Max Token Age",
        extended: true,
    },
    Column {
        key: "enabled",
        header: "Enabled",
        extended: false,
    },
    Column {
        key: "lastUsedAt",
        header: "Last Used",
        extended: false,
    },
    Column {
        key: "description",
        header: "Description",
        extended: true,
    },
    Column {
        key: "createdAt",
        header: "Created",
        extended: true,
    },
    Column {
        key: "updatedAt",
        header: "Updated",
        extended: true,
    },
];

/// Conditions as one cell: `claim=value` (exact) and `claim~pattern` (glob), comma-separated.
pub fn conditions_cell(conditions: &Value) -> String {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let operator = if c["match"] == "GLOB" { "~" } else { "=" };
            format!("{}{operator}{}", cell(&c["claim"]), cell(&c["value"]))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Seconds as a humantime duration (`3600` → `1h`).
fn duration_cell(seconds: &Value) -> String {
    match seconds.as_u64() {
        Some(secs) => humantime::format_duration(Duration::from_secs(secs)).to_string(),
        None => cell(seconds),
    }
}

pub fn list(ctx: &Ctx, flags: &TableFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let answer = session.graphql_answer(ctx, LIST, json!({}))?;
    let policies = answer.required(
        &["trustPolicies"],
        "This server has no trust policies (it is not prism-auth, or too old).",
    )?;
    let rows = policies
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                cell(&p["id"]),
                cell(&p["name"]),
                cell(&p["issuer"]),
                cell(&p["audience"]),
                conditions_cell(&p["conditions"]),
                cell(&p["serviceAccount"]["name"]),
                words(&p["scopes"]),
                duration_cell(&p["accessTokenLifetimeSeconds"]),
                duration_cell(&p["maxTokenAgeSeconds"]),
                cell(&p["enabled"]),
                cell(&p["lastUsedAt"]),
                cell(&p["description"]),
                cell(&p["createdAt"]),
                cell(&p["updatedAt"]),
            ]
        })
        .collect();
    table::print(COLUMNS, rows, flags)
}

/// The id of the service account whose id or name is `wanted` (an id wins over a name).
fn service_account_id(ctx: &Ctx, session: &mut Session, wanted: &str) -> Result<String> {
    let answer = session.graphql_answer(ctx, LIST_SERVICE_ACCOUNTS, json!({}))?;
    let accounts = answer.required(
        &["serviceAccounts"],
        "This server has no service accounts (it is not prism-auth, or too old).",
    )?;
    let accounts = accounts.as_array().map(Vec::as_slice).unwrap_or_default();
    let by = |key: &str| {
        accounts
            .iter()
            .find(|a| a[key].as_str() == Some(wanted))
            .and_then(|a| a["id"].as_str())
    };
    match by("id").or_else(|| by("name")) {
        Some(id) => Ok(id.to_owned()),
        None => fail!(
            "There is no service account with the id or name '{wanted}'; see 'prism service-accounts:list'."
        ),
    }
}

/// Runs a create or update mutation; prints the policy's id.
fn save(ctx: &Ctx, session: &mut Session, document: &str, field: &str, input: Value) -> Result<()> {
    let data = session.graphql(ctx, document, json!({ "input": input }))?;
    let payload = &data[field];
    payload_errors(payload)?;
    let id = payload["trustPolicy"]["id"]
        .as_str()
        .ok_or_else(|| Error::new("The server saved no trust policy and gave no reason."))?;
    println!("{id}");
    Ok(())
}

/// Prints the new policy's id.
pub fn create(ctx: &Ctx, flags: &CreateFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let account = service_account_id(ctx, &mut session, &flags.service_account)?;
    let mut input = Map::new();
    input.insert("name".into(), flags.name.clone().into());
    input.insert("issuer".into(), flags.issuer.clone().into());
    input.insert("audience".into(), flags.audience.clone().into());
    input.insert("serviceAccountId".into(), account.into());
    // Required by the schema: with none given, the server says what a policy needs.
    input.insert("conditions".into(), flags.rules.conditions().into());
    flags.rules.fill(&mut input);
    if flags.disabled {
        input.insert("enabled".into(), false.into());
    }
    save(ctx, &mut session, CREATE, "createTrustPolicy", input.into())
}

/// Prints the policy's id.
pub fn update(ctx: &Ctx, flags: &UpdateFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let mut input = Map::new();
    input.insert("id".into(), flags.id.clone().into());
    for (key, value) in [
        ("name", &flags.name),
        ("issuer", &flags.issuer),
        ("audience", &flags.audience),
    ] {
        if let Some(value) = value {
            input.insert(key.into(), value.clone().into());
        }
    }
    if let Some(wanted) = &flags.service_account {
        let account = service_account_id(ctx, &mut session, wanted)?;
        input.insert("serviceAccountId".into(), account.into());
    }
    flags.rules.fill(&mut input);
    if flags.all_scopes {
        input.insert("scopes".into(), json!([]));
    }
    if flags.enable || flags.disable {
        input.insert("enabled".into(), flags.enable.into());
    }
    if input.len() == 1 {
        fail!(
            "Nothing to change: give at least one flag (see 'prism trust-policies:update --help')."
        );
    }
    save(ctx, &mut session, UPDATE, "updateTrustPolicy", input.into())
}

pub fn delete(ctx: &Ctx, id: &str) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, DELETE, json!({ "id": id }))?;
    let payload = &data["deleteTrustPolicy"];
    payload_errors_pointing_to(payload, "the trust policies", "trust-policies:list")?;
    if payload["deleted"] != Value::Bool(true) {
        fail!("The server deleted no trust policy and gave no reason.");
    }
    ctx.say(&format!("Deleted trust policy {id}."));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_claim("sub=repo:a/b:ref=x"),
            Ok(("sub".into(), "repo:a/b:ref=x".into()))
        );
        assert!(parse_claim("=x").is_err());
        assert!(parse_claim("sub").is_err());
    }

    #[test]
    fn durations_are_whole_seconds() {
        assert_eq!(parse_seconds("1h"), Ok(3600));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn conditions_read_as_claim_operator_value() {
        let conditions = json!([
            { "claim": "sub", "match": "EXACT", "value": "repo:a/b" },
            { "claim": "ref", "match": "GLOB", "value": "refs/heads/*" }
        ]);
        assert_eq!(
            conditions_cell(&conditions),
            "sub=repo:a/b, ref~refs/heads/*"
        );
    }

    #[test]
    fn only_given_fields_are_sent() {
        let flags = RuleFlags {
            claim_globs: vec![("ref".into(), "refs/*".into())],
            lifetime: Some(600),
            ..RuleFlags::default()
        };
        let mut input = Map::new();
        flags.fill(&mut input);
        assert_eq!(
            Value::from(input),
            json!({
                "conditions": [{ "claim": "ref", "match": "GLOB", "value": "refs/*" }],
                "accessTokenLifetimeSeconds": 600
            })
        );
    }
}
