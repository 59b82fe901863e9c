//! Choosing the organization (tenant) a profile uses after `prism login`, as the official client
//! does: one sign-in identity may belong to several organizations; with more than one active
//! (not `systemSuspended`) tenant, the person picks one and the login refreshes with its
//! `tenant_id`.
//!
//! The prompt goes to stderr and the answer is one line read from stdin, whether or not stdin
//! is a terminal (so scripts and tests can pipe it): the number shown in the list, or a tenant
//! ID; an empty line keeps the current tenant when there is one. End of input or anything else
//! is an error and nothing is saved.

use std::io::{BufRead, Write};

use serde_json::Value;

use crate::error::{Error, Result};

/// One node of `listUserTenants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub org_name: String,
    pub suspended: bool,
}

/// The tenants in the `data` of `ListUserTenants` (nodes without a `tenantId` are skipped).
pub fn from_data(data: &Value) -> Vec<Tenant> {
    data["listUserTenants"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| {
            let tenant_id = node["tenantId"].as_str().filter(|t| !t.is_empty())?;
            Some(Tenant {
                tenant_id: tenant_id.to_owned(),
                org_name: node["orgName"].as_str().unwrap_or_default().to_owned(),
                suspended: node["systemSuspended"] == Value::Bool(true),
            })
        })
        .collect()
}

/// What the login does with the tenant list and the tenant `whoami` reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    /// Keep the tenant of the login (one active tenant, or none listed).
    Keep,
    /// The login's tenant is suspended and exactly one other is active: use it.
    Only(&'a Tenant),
    /// Ask which of these active tenants to use.
    Choose(Vec<&'a Tenant>),
    /// The login's tenant is suspended and no other is active.
    NoneActive,
}

pub fn select<'a>(tenants: &'a [Tenant], current: Option<&str>) -> Selection<'a> {
    let active: Vec<&Tenant> = tenants.iter().filter(|t| !t.suspended).collect();
    let current_suspended = tenants
        .iter()
        .any(|t| t.suspended && Some(t.tenant_id.as_str()) == current);
    match active.len() {
        _ if !current_suspended && active.len() <= 1 => Selection::Keep,
        0 => Selection::NoneActive,
        1 => Selection::Only(active[0]),
        _ => Selection::Choose(active),
    }
}

/// The current tenant when it is one of the choices (the default of an empty answer).
fn default_choice<'a>(
    choices: &[&'a Tenant],
    current: Option<&str>,
) -> Option<(usize, &'a Tenant)> {
    choices
        .iter()
        .enumerate()
        .find(|(_, t)| Some(t.tenant_id.as_str()) == current)
        .map(|(i, t)| (i + 1, *t))
}

/// The prompt's text, ending without a newline where the answer goes.
pub fn render(choices: &[&Tenant], current: Option<&str>, profile: &str) -> String {
    let mut text = format!(
        "You are a member of {} organizations; choose the one profile '{profile}' uses:\n",
        choices.len()
    );
    for (i, tenant) in choices.iter().enumerate() {
        let marker = if Some(tenant.tenant_id.as_str()) == current {
            " (current)"
        } else {
            ""
        };
        text.push_str(&format!(
            "  {}) {} [{}]{marker}\n",
            i + 1,
            tenant.org_name,
            tenant.tenant_id
        ));
    }
    match default_choice(choices, current) {
        Some((number, _)) => {
            text.push_str(&format!("Organization (number or tenant ID) [{number}]: "))
        }
        None => text.push_str("Organization (number or tenant ID): "),
    }
    text
}

/// The tenant ID an answer names: `None` is end of input. An exact tenant ID wins over a
/// number; an empty line is the current tenant when it is among the choices.
pub fn parse_choice(
    answer: Option<&str>,
    choices: &[&Tenant],
    current: Option<&str>,
) -> Result<String> {
    let retry =
        "nothing was saved. Run 'prism login' again, or set PRISMATIC_TENANT_ID to the tenant ID.";
    let Some(answer) = answer else {
        return Err(Error::new(format!(
            "No organization was chosen (end of input); {retry}"
        )));
    };
    let answer = answer.trim();
    if answer.is_empty() {
        return default_choice(choices, current)
            .map(|(_, t)| t.tenant_id.clone())
            .ok_or_else(|| Error::new(format!("No organization was chosen; {retry}")));
    }
    if let Some(tenant) = choices.iter().find(|t| t.tenant_id == answer) {
        return Ok(tenant.tenant_id.clone());
    }
    answer
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| choices.get(i))
        .map(|t| t.tenant_id.clone())
        .ok_or_else(|| {
            Error::new(format!(
                "'{answer}' is not one of the choices (a number from 1 to {} or a tenant ID from the list); {retry}",
                choices.len()
            ))
        })
}

/// Shows the prompt on stderr and reads one line from stdin.
pub fn prompt(choices: &[&Tenant], current: Option<&str>, profile: &str) -> Result<String> {
    let mut stderr = std::io::stderr().lock();
    stderr
        .write_all(render(choices, current, profile).as_bytes())
        .and_then(|()| stderr.flush())
        .map_err(|e| Error::new(format!("cannot write to stderr: {e}")))?;
    drop(stderr);
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::new(format!("cannot read the answer: {e}")))?;
    if read == 0 {
        // End of input: end the prompt's line so the error starts on its own.
        eprintln!();
    }
    parse_choice((read > 0).then_some(line.as_str()), choices, current)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tenant(id: &str, org: &str, suspended: bool) -> Tenant {
        Tenant {
            tenant_id: id.to_owned(),
            org_name: org.to_owned(),
            suspended,
        }
    }

    fn three() -> Vec<Tenant> {
        vec![
            tenant("t-acme", "Acme", false),
            tenant("t-old", "Old Co", true),
            tenant("t-beta", "Beta", false),
        ]
    }

    #[test]
    fn reads_list_user_tenants() {
        let data = json!({ "listUserTenants": { "nodes": [
            { "tenantId": "t1", "url": "https://a", "orgName": "A", "awsRegion": "x", "systemSuspended": false },
            { "tenantId": "t2", "orgName": "B", "systemSuspended": true },
            { "tenantId": "", "orgName": "no id" },
            { "orgName": "no id either" },
        ] } });
        assert_eq!(
            from_data(&data),
            vec![tenant("t1", "A", false), tenant("t2", "B", true)]
        );
        assert_eq!(from_data(&json!({ "listUserTenants": null })), vec![]);
    }

    #[test]
    fn prompts_only_with_a_choice() {
        let tenants = three();
        let active: Vec<&Tenant> = vec![&tenants[0], &tenants[2]];
        assert_eq!(select(&tenants, Some("t-acme")), Selection::Choose(active));
        // One active tenant, or none listed (a server without the query): no prompt.
        let one = vec![
            tenant("t-acme", "Acme", false),
            tenant("t-old", "Old", true),
        ];
        assert_eq!(select(&one, Some("t-acme")), Selection::Keep);
        assert_eq!(select(&[], Some("t-acme")), Selection::Keep);
        assert_eq!(select(&[], None), Selection::Keep);
        // The login's own tenant is suspended: switch to the only active one, or fail.
        assert_eq!(select(&one, Some("t-old")), Selection::Only(&one[0]));
        let none = vec![tenant("t-old", "Old", true)];
        assert_eq!(select(&none, Some("t-old")), Selection::NoneActive);
    }

    #[test]
    fn renders_the_list_with_the_current_tenant_marked() {
        let tenants = three();
        let choices: Vec<&Tenant> = vec![&tenants[0], &tenants[2]];
        assert_eq!(
            render(&choices, Some("t-beta"), "work"),
            "You are a member of 2 organizations; choose the one profile 'work' uses:\n  \
             1) Acme [t-acme]\n  2) Beta [t-beta] (current)\n\
             Organization (number or tenant ID) [2]: "
        );
        assert!(
            render(&choices, Some("t-old"), "work")
                .ends_with("\nOrganization (number or tenant ID): ")
        );
    }

    #[test]
    fn parses_numbers_tenant_ids_and_the_default() -> Result<()> {
        let tenants = three();
        let choices: Vec<&Tenant> = vec![&tenants[0], &tenants[2]];
        let current = Some("t-acme");
        assert_eq!(parse_choice(Some("2\n"), &choices, current)?, "t-beta");
        assert_eq!(parse_choice(Some(" 1 \r\n"), &choices, current)?, "t-acme");
        assert_eq!(parse_choice(Some("t-beta\n"), &choices, current)?, "t-beta");
        assert_eq!(parse_choice(Some("\n"), &choices, current)?, "t-acme");
        // An exact tenant ID wins over a number.
        let numeric = [tenant("x", "X", false), tenant("1", "One", false)];
        let numeric: Vec<&Tenant> = numeric.iter().collect();
        assert_eq!(parse_choice(Some("1"), &numeric, None)?, "1");
        assert_eq!(parse_choice(Some("2"), &numeric, None)?, "1");
        Ok(())
    }

    #[test]
    fn refuses_end_of_input_and_anything_else() {
        let tenants = three();
        let choices: Vec<&Tenant> = vec![&tenants[0], &tenants[2]];
        let message = |answer: Option<&str>, current: Option<&str>| {
            parse_choice(answer, &choices, current)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            message(None, Some("t-acme"))
                .starts_with("No organization was chosen (end of input); nothing was saved.")
        );
        // An empty line without a current tenant among the choices.
        assert!(
            message(Some("\n"), Some("t-old"))
                .starts_with("No organization was chosen; nothing was saved.")
        );
        for bad in ["0", "3", "-1", "t-old", "acme", "1 2"] {
            let error = message(Some(bad), Some("t-acme"));
            assert!(
                error.starts_with(&format!(
                    "'{bad}' is not one of the choices (a number from 1 to 2"
                )),
                "{bad}: {error}"
            );
            assert!(error.contains("nothing was saved"), "{error}");
        }
    }
}
