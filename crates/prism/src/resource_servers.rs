//! `resource-servers:*` (a prism-auth addition): the organization's resource servers, the
//! services of its own that ask `/oauth/introspect` about access tokens, listed, created,
//! re-keyed and deleted through the GraphQL API (Owners).

use serde_json::{Value, json};

use crate::commands::{cell, payload_errors, payload_errors_pointing_to};
use crate::error::{Error, Result};
use crate::fail;
use crate::session::{Ctx, Session};
use crate::table::{self, Column, TableFlags};

pub const LIST: &str = "query listResourceServers { resourceServers { clientId name description createdAt secretSetAt } }";
pub const CREATE: &str = "mutation createResourceServer($name: String!, $description: String) { createResourceServer(name: $name, description: $description) { resourceServer { clientId } clientSecret errors { field messages } } }";
pub const ROTATE: &str = "mutation rotateResourceServerSecret($id: ID!) { rotateResourceServerSecret(id: $id) { resourceServer { clientId } clientSecret errors { field messages } } }";
pub const DELETE: &str = "mutation deleteResourceServer($id: ID!) { deleteResourceServer(id: $id) { deleted errors { field messages } } }";

const COLUMNS: &[Column] = &[
    Column {
        key: "clientId",
        header: "Client id",
        extended: false,
    },
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "secretSetAt",
        header: "Secret set at",
        extended: false,
    },
    Column {
        key: "description",
        header: "Description",
        extended: true,
    },
    Column {
        key: "createdAt",
        header: "Created at",
        extended: true,
    },
];

pub fn list(ctx: &Ctx, flags: &TableFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let answer = session.graphql_answer(ctx, LIST, json!({}))?;
    let servers = answer.required(
        &["resourceServers"],
        "This server has no resource servers (it is not prism-auth, or too old).",
    )?;
    let rows = servers
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                cell(&s["clientId"]),
                cell(&s["name"]),
                cell(&s["secretSetAt"]),
                cell(&s["description"]),
                cell(&s["createdAt"]),
            ]
        })
        .collect();
    table::print(COLUMNS, rows, flags)
}

/// Prints `{"client_id": ..., "client_secret": ...}` from a payload that made a secret.
fn print_credentials(payload: &Value) -> Result<()> {
    let (Some(client_id), Some(client_secret)) = (
        payload["resourceServer"]["clientId"].as_str(),
        payload["clientSecret"].as_str(),
    ) else {
        return Err(Error::new(
            "The server made no client secret and gave no reason.",
        ));
    };
    println!(
        "{}",
        json!({ "client_id": client_id, "client_secret": client_secret })
    );
    Ok(())
}

/// Registers a resource server; prints its credentials (the secret is shown this once).
pub fn create(ctx: &Ctx, name: &str, description: Option<&str>) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(
        ctx,
        CREATE,
        json!({ "name": name, "description": description }),
    )?;
    let payload = &data["createResourceServer"];
    payload_errors(payload)?;
    print_credentials(payload)?;
    // Beside the credentials, not among them: stdout is for `jq`.
    eprintln!("Keep the client secret in a secret store: it is not shown again.");
    Ok(())
}

/// Gives a resource server a new secret; prints its credentials.
pub fn rotate_secret(ctx: &Ctx, id: &str) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, ROTATE, json!({ "id": id }))?;
    let payload = &data["rotateResourceServerSecret"];
    payload_errors_pointing_to(payload, "the resource servers", "resource-servers:list")?;
    print_credentials(payload)?;
    eprintln!("The old client secret no longer works.");
    Ok(())
}

pub fn delete(ctx: &Ctx, id: &str) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, DELETE, json!({ "id": id }))?;
    let payload = &data["deleteResourceServer"];
    payload_errors_pointing_to(payload, "the resource servers", "resource-servers:list")?;
    if payload["deleted"] != Value::Bool(true) {
        fail!("The server deleted no resource server and gave no reason.");
    }
    ctx.say(&format!("Deleted resource server {id}."));
    Ok(())
}
