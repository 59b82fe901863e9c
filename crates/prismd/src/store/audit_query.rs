//! Reading the audit trail: the filters of one page and the SQL they make.

/// The columns of an [`AuditRecord`], the same on both backends.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at, action, actor, org_id, subject_user_id, address, user_agent, detail";

/// Most events a page of the audit trail holds: pages are for reading, and a bounded page
/// keeps one request's work bounded. [`Store::audit_events_page`] returns one more at most,
/// so a reader can tell whether another page follows.
pub const MAX_AUDIT_PAGE: i64 = 200;

/// Which audit events [`Store::audit_events_page`] reads; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this organization's events. `None` (operators only) reads every organization's
    /// and the events that belong to none (for example a failed sign-in of an unknown email).
    pub org_id: Option<String>,
    pub action: Option<String>,
    /// Events this user did (actor `user:<id>`) or that are about them (subject).
    pub user_id: Option<String>,
    /// At or after this time (ms).
    pub since: Option<i64>,
    /// Before this time (ms).
    pub until: Option<i64>,
    /// Keyset cursor: only events with a smaller id (older) than this one.
    pub before_id: Option<i64>,
}

/// A value bound to the statement [`AuditQuery::statement`] builds.
pub enum AuditBind {
    Text(String),
    Int(i64),
}

impl AuditQuery {
    /// The `SELECT` of one page, newest first, with only the conditions this query has (so
    /// each backend plans it with the `(org_id, id)` index of migration 0008, not around
    /// `$n IS NULL` branches), and what to bind, in order. `$n` placeholders work on both
    /// backends. Public so the conformance suite can check the plan of exactly this SQL.
    pub fn statement(&self, limit: i64) -> (String, Vec<AuditBind>) {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        fn next(bind: AuditBind, binds: &mut Vec<AuditBind>) -> String {
            binds.push(bind);
            format!("${}", binds.len())
        }
        if let Some(org) = &self.org_id {
            conditions.push(format!(
                "org_id = {}",
                next(AuditBind::Text(org.clone()), &mut binds)
            ));
        }
        if let Some(action) = &self.action {
            conditions.push(format!(
                "action = {}",
                next(AuditBind::Text(action.clone()), &mut binds)
            ));
        }
        if let Some(user) = &self.user_id {
            let subject = next(AuditBind::Text(user.clone()), &mut binds);
            let actor = next(AuditBind::Text(format!("user:{user}")), &mut binds);
            conditions.push(format!("(subject_user_id = {subject} OR actor = {actor})"));
        }
        if let Some(since) = self.since {
            conditions.push(format!("at >= {}", next(AuditBind::Int(since), &mut binds)));
        }
        if let Some(until) = self.until {
            conditions.push(format!("at < {}", next(AuditBind::Int(until), &mut binds)));
        }
        if let Some(before) = self.before_id {
            conditions.push(format!("id < {}", next(AuditBind::Int(before), &mut binds)));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let limit = next(
            AuditBind::Int(limit.clamp(1, MAX_AUDIT_PAGE + 1)),
            &mut binds,
        );
        (
            format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events{filter} ORDER BY id DESC LIMIT {limit}"
            ),
            binds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_statements_bind_only_the_filters_given() {
        let (sql, binds) = AuditQuery::default().statement(50);
        assert_eq!(
            sql,
            format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT $1")
        );
        assert!(matches!(binds.as_slice(), [AuditBind::Int(50)]));
        let full = AuditQuery {
            org_id: Some("o".into()),
            action: Some("login.failed".into()),
            user_id: Some("u".into()),
            since: Some(10),
            until: Some(20),
            before_id: Some(99),
        };
        let (sql, binds) = full.statement(1_000_000);
        assert!(sql.ends_with(
            "WHERE org_id = $1 AND action = $2 AND (subject_user_id = $3 OR actor = $4) \
             AND at >= $5 AND at < $6 AND id < $7 ORDER BY id DESC LIMIT $8"
        ));
        let texts: Vec<&str> = binds
            .iter()
            .filter_map(|b| match b {
                AuditBind::Text(t) => Some(t.as_str()),
                AuditBind::Int(_) => None,
            })
            .collect();
        assert_eq!(texts, ["o", "login.failed", "u", "user:u"]);
        assert!(
            matches!(binds.last(), Some(AuditBind::Int(limit)) if *limit == MAX_AUDIT_PAGE + 1),
            "the page is capped"
        );
    }
}
