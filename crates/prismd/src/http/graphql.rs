//! The GraphQL schema behind `/api`, with the field names the official `prism` CLI sends:
//! the caller, their tenants, the organization's users (Relay cursor pages), roles, and the
//! user mutations. Resolvers call the domain's services (accounts, sessions, policies, the
//! audit trail) through `AuthService`; validation and
//! permission problems come back in the payload's `errors { field messages }`.

use std::sync::Arc;

use async_graphql::{
    Context, ErrorExtensions, ID, InputObject, MaybeUndefined, Object, SimpleObject,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::log_unavailable;
use crate::domain::accounts::{UserDraft, parse_public_id, public_id};
use crate::domain::auth::{AuthService, Principal};
use crate::domain::policies::{PolicyDays, PolicyUpdate};
use crate::domain::roles::Role;
use crate::domain::scopes::{ApiScope, TokenScopes};
use crate::domain::sessions::LiveSession;
use crate::domain::{DomainError, RequestMeta, audit};
use crate::store::{
    AuditRecord, Delivery, Organization, ProfileChanges, SessionRecord, StoreError, User,
};

/// Page size when the client does not ask for one, and the largest it may ask for.
const PAGE_SIZE: i64 = 100;

/// What a list field costs in the query's complexity: what each item asks for, times how many
/// items it may return (the page asked for, at most `most`). Without it every field costs 1
/// whatever the list's size, and 200 aliases of users with their sessions passed the limit
/// while running some 60,000 SQL queries.
fn page_cost(first: Option<i32>, most: i64, child_complexity: usize) -> usize {
    let items = first.map_or(most, |n| i64::from(n).clamp(1, most));
    usize::try_from(items)
        .unwrap_or(usize::MAX)
        .saturating_mul(child_complexity)
        .saturating_add(1)
}

/// `extensions.code` of a GraphQL error that means "the database is unavailable; retry":
/// the handler turns a response with one into an HTTP 503 with `Retry-After`.
pub const UNAVAILABLE_CODE: &str = "SERVICE_UNAVAILABLE";

fn unavailable() -> async_graphql::Error {
    async_graphql::Error::new("the service is temporarily unavailable; retry shortly")
        .extend_with(|_, extensions| extensions.set("code", UNAVAILABLE_CODE))
}

pub(super) fn store_unavailable(err: StoreError) -> async_graphql::Error {
    log_unavailable(&err);
    unavailable()
}

/// Where the resolvers send mail: the server's mailer, when SMTP is configured (request data).
#[derive(Clone)]
pub struct Outbox(pub Option<Arc<crate::mail::Mailer>>);

pub(super) struct Caller<'a> {
    pub(super) principal: &'a Principal,
    pub(super) auth: &'a Arc<AuthService>,
    pub(super) meta: RequestMeta,
    /// The mailer, when SMTP is configured.
    mail: Option<Arc<crate::mail::Mailer>>,
}

impl Caller<'_> {
    /// Refuses (as a domain error) when the caller's token or role lacks `scope`.
    pub(super) fn require(&self, scope: ApiScope) -> Result<(), DomainError> {
        self.principal.require(scope)
    }

    /// The audit actor of the caller.
    pub(super) fn actor(&self) -> &crate::store::User {
        &self.principal.user
    }
}

pub(super) fn caller<'a>(ctx: &Context<'a>) -> async_graphql::Result<Caller<'a>> {
    Ok(Caller {
        principal: ctx.data::<Principal>()?,
        auth: ctx.data::<Arc<AuthService>>()?,
        meta: ctx.data::<RequestMeta>().cloned().unwrap_or_default(),
        mail: ctx
            .data::<Outbox>()
            .ok()
            .and_then(|outbox| outbox.0.clone()),
    })
}

/// Makes an invitation for `user` to set their identity's first password and delivers it:
/// by mail when SMTP is configured (`None` comes back: nobody but the mailbox sees the link),
/// otherwise handed back as a URL, which the domain allows only for an identity this
/// organization created and nobody has used.
async fn deliver_invitation(
    caller: &Caller<'_>,
    user: &User,
) -> Result<Option<String>, DomainError> {
    let accounts = caller.auth.accounts();
    let actor = format!("user:{}", caller.principal.user.id);
    let Some(mailer) = caller.mail.clone() else {
        let token = accounts
            .create_invitation(user, actor, Delivery::Handed, &caller.meta)
            .await?;
        return Ok(Some(invitation_url(caller.auth, &token)));
    };
    let token = accounts
        .create_invitation(user, actor, Delivery::Email, &caller.meta)
        .await?;
    let mail = crate::mail::invitation(
        &user.email,
        &caller.principal.org.name,
        &invitation_url(caller.auth, &token),
    );
    // The Admin waits for this one: a mail that could not be sent is an error they must see.
    mailer.send(mail).await.map_err(|err| {
        DomainError::MailNotSent(format!("the invitation mail was not sent: {err}"))
    })?;
    Ok(None)
}

/// A validation or permission problem, as Prismatic's payloads report them.
#[derive(SimpleObject, Clone)]
#[graphql(name = "ErrorType")]
pub struct FieldError {
    field: String,
    messages: Vec<String>,
}

/// The field a refusal is answered against: the whole request (`__all__`) when the caller may
/// not do it at all, else `field`.
pub(super) fn refusal_field(err: &DomainError, field: &'static str) -> &'static str {
    if matches!(err, DomainError::AccessDenied(_)) {
        "__all__"
    } else {
        field
    }
}

/// Domain failures of a mutation: user errors go into the payload (against `field`), while an
/// unavailable database is a top-level error the client can retry.
pub(super) fn payload_errors(
    err: DomainError,
    field: &str,
) -> async_graphql::Result<Vec<FieldError>> {
    let (field, message) = match err {
        DomainError::InvalidInput(msg) | DomainError::Conflict(msg) => (field, msg),
        DomainError::NotFound(msg) => ("id", msg),
        DomainError::AccessDenied(msg) => ("__all__", msg),
        DomainError::Unavailable(cause) => return Err(store_unavailable(cause)),
        other => {
            tracing::error!(error = %other, "mutation failed");
            return Err(async_graphql::Error::new("internal error"));
        }
    };
    Ok(vec![FieldError {
        field: field.to_owned(),
        messages: vec![message],
    }])
}

pub(super) fn user_id_from(id: &ID) -> Result<String, DomainError> {
    parse_public_id("User", id)
        .ok_or_else(|| DomainError::NotFound("no such user in your organization".into()))
}

#[derive(Default)]
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The user the access token belongs to.
    async fn authenticated_user(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        let principal = ctx.data::<Principal>()?;
        Ok(UserNode::new(principal.user.clone(), principal.org.clone()))
    }

    /// The tenants (organizations) where the caller's sign-in identity is a member.
    async fn list_user_tenants(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<TenantConnection> {
        let caller = caller(ctx)?;
        let orgs = caller
            .auth
            .accounts()
            .tenants_of(&caller.principal.user)
            .await
            .map_err(query_error)?;
        let url = caller.auth.settings().issuer.clone();
        Ok(TenantConnection {
            nodes: orgs
                .into_iter()
                .map(|org| TenantNode {
                    tenant_id: org.tenant_id,
                    url: url.clone(),
                    org_name: org.name,
                    aws_region: "self-hosted".to_owned(),
                    system_suspended: false,
                })
                .collect(),
        })
    }

    /// The caller's organization.
    async fn organization(&self, ctx: &Context<'_>) -> async_graphql::Result<OrganizationNode> {
        Ok(OrganizationNode(ctx.data::<Principal>()?.org.clone()))
    }

    /// The roles a user can have.
    async fn organization_roles(&self) -> Vec<RoleNode> {
        Role::ALL.into_iter().map(RoleNode).collect()
    }

    /// The caller's organization's security events, newest first, in pages (`after` is a
    /// previous page's `endCursor`; absent or empty means the first page; `first` is 1 to 200,
    /// default 50). Owners and Admins only: anyone else gets null with a `FORBIDDEN` error.
    #[graphql(complexity = "page_cost(first, crate::store::MAX_AUDIT_PAGE, child_complexity)")]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditEventFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Option<AuditEventConnection>> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::AuditRead).map_err(query_error)?;
        // Refused before the filters are read: a Member learns nothing from a bad filter.
        audit::ensure_reader(&caller.principal.user).map_err(query_error)?;
        let filter = filter.unwrap_or_default().checked().map_err(query_error)?;
        let after =
            match after.as_deref().filter(|a| !a.is_empty()) {
                None => None,
                Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
                    query_error(DomainError::InvalidInput("invalid cursor".into()))
                })?),
            };
        let page = caller
            .auth
            .audit()
            .organization_events(&caller.principal.user, filter, first.map(i64::from), after)
            .await
            .map_err(query_error)?;
        let end_cursor = page.events.last().map(|event| event.id.to_string());
        Ok(Some(AuditEventConnection {
            nodes: page.events.into_iter().map(AuditEventNode).collect(),
            page_info: PageInfo {
                has_next_page: page.has_next_page,
                end_cursor,
            },
        }))
    }
}

/// The filters of `auditEvents`; absent fields match everything.
#[derive(InputObject, Default)]
pub struct AuditEventFilter {
    /// One action, e.g. `login.failed` (see docs/security.md, "Audit trail").
    action: Option<String>,
    /// Events the user did (actor) or that are about them (subject): a user id.
    user_id: Option<ID>,
    /// At or after this time (RFC 3339, e.g. `2026-01-31T12:00:00Z`).
    since: Option<String>,
    /// Before this time (RFC 3339).
    until: Option<String>,
}

impl AuditEventFilter {
    fn checked(self) -> Result<audit::AuditFilter, DomainError> {
        let user_id = match &self.user_id {
            None => None,
            Some(id) => Some(parse_public_id("User", id).ok_or_else(|| {
                DomainError::InvalidInput("userId must be a user id from this API".into())
            })?),
        };
        Ok(audit::AuditFilter {
            action: self.action,
            user_id,
            since: self
                .since
                .as_deref()
                .map(|t| rfc3339_ms("since", t))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|t| rfc3339_ms("until", t))
                .transpose()?,
        })
    }
}

/// An RFC 3339 time as milliseconds since the Unix epoch.
pub(super) fn rfc3339_ms(field: &str, text: &str) -> Result<i64, DomainError> {
    humantime::parse_rfc3339_weak(text.trim())
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|since| i64::try_from(since.as_millis()).ok())
        .ok_or_else(|| {
            DomainError::InvalidInput(format!(
                "{field} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"
            ))
        })
}

#[derive(SimpleObject)]
pub struct AuditEventConnection {
    nodes: Vec<AuditEventNode>,
    page_info: PageInfo,
}

/// A security event as Owners and Admins read it. Never a secret: no token, password or
/// hash is ever recorded.
pub struct AuditEventNode(AuditRecord);

#[Object(name = "AuditEvent")]
impl AuditEventNode {
    /// Grows with every event; also the cursor.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// RFC 3339, UTC.
    async fn at(&self) -> String {
        timestamp(self.0.at)
    }
    /// For example `login.failed`, `user.role_changed`, `tokens.revoked_all`.
    async fn action(&self) -> &str {
        &self.0.action
    }
    /// Who did it: `user:<uuid>`, `session:<session id>`, `address:<ip>`, `operator` or
    /// `invitation`.
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    /// The acting user, when the actor is one (`user:<uuid>`), as the id the rest of the API
    /// uses.
    async fn actor_user_id(&self) -> Option<ID> {
        self.0
            .actor
            .strip_prefix("user:")
            .map(|id| ID(public_id("User", id)))
    }
    /// The user the event is about, as the id the rest of the API uses.
    async fn subject_user_id(&self) -> Option<ID> {
        self.0
            .subject_user_id
            .as_deref()
            .map(|id| ID(public_id("User", id)))
    }
    /// The client address of the request (the TCP peer).
    async fn address(&self) -> Option<&str> {
        self.0.address.as_deref()
    }
    /// The request's `User-Agent` (at most 256 characters).
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    /// Details of the event as a JSON object in a string, e.g. `{"from":"admin","to":"owner"}`.
    async fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }
}

/// A user as the API shows it.
pub struct UserNode {
    user: User,
    org: Organization,
    /// Its sessions, when the page it is listed in read them for all its users at once.
    sessions: PrefetchedSessions,
}

impl UserNode {
    fn new(user: User, org: Organization) -> Self {
        Self {
            user,
            org,
            sessions: None,
        }
    }
}

#[Object(name = "User")]
impl UserNode {
    /// `base64("User:<uuid>")`; for a service account calling `authenticatedUser`, its
    /// `ServiceAccount` id, the one `serviceAccounts` shows.
    async fn id(&self) -> ID {
        let kind = if self.user.is_service_account() {
            "ServiceAccount"
        } else {
            "User"
        };
        ID(public_id(kind, &self.user.id))
    }
    async fn name(&self) -> &str {
        &self.user.name
    }
    async fn email(&self) -> &str {
        &self.user.email
    }
    async fn tenant_id(&self) -> &str {
        &self.org.tenant_id
    }
    async fn phone(&self) -> Option<&str> {
        self.user.phone.as_deref()
    }
    async fn external_id(&self) -> Option<&str> {
        self.user.external_id.as_deref()
    }
    async fn role(&self) -> RoleNode {
        RoleNode(Role::of(&self.user))
    }
    async fn dark_mode(&self) -> bool {
        self.user.dark_mode
    }
    async fn dark_mode_sync_with_os(&self) -> bool {
        self.user.dark_mode_sync_with_os
    }
    async fn org(&self) -> Option<OrganizationNode> {
        Some(OrganizationNode(self.org.clone()))
    }
    /// Set for customer users; this server has organization users only, so always null.
    async fn customer(&self) -> Option<CustomerNode> {
        None
    }

    /// This user's live sessions (refresh tokens), newest first: your own, or (Owners and
    /// Admins) a member's; Admins not Owners'. Null, with an error, for anyone else's.
    #[graphql(complexity = "page_cost(None, crate::store::MAX_LISTED_SESSIONS, child_complexity)")]
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Vec<SessionNode>>> {
        session_nodes(ctx, &self.user.id, &self.sessions).await
    }
}

/// What a list read for one of its members' sessions: `None` when it read nothing (the query
/// did not ask, or the caller may not), and the node reads its own.
pub(super) type PrefetchedSessions = Option<Result<Vec<LiveSession>, async_graphql::Error>>;

/// The sessions of each of `members` (in order), read at once when `wanted` and the caller
/// may read sessions: one read for a whole list instead of three per member.
pub(super) async fn prefetch_sessions(
    ctx: &Context<'_>,
    members: &[User],
    wanted: bool,
) -> async_graphql::Result<Vec<PrefetchedSessions>> {
    let caller = caller(ctx)?;
    if !wanted || caller.require(ApiScope::SessionsRead).is_err() {
        return Ok(members.iter().map(|_| None).collect());
    }
    let listed = caller
        .auth
        .sessions()
        .list_for_members(caller.actor(), members)
        .await
        .map_err(query_error)?;
    Ok(listed
        .into_iter()
        .map(|sessions| Some(sessions.map_err(query_error)))
        .collect())
}

/// A member's live sessions as the API shows them (`sessions:read`): what its list read, or
/// else read for `holder_id` alone.
pub(super) async fn session_nodes(
    ctx: &Context<'_>,
    holder_id: &str,
    prefetched: &PrefetchedSessions,
) -> async_graphql::Result<Option<Vec<SessionNode>>> {
    let caller = caller(ctx)?;
    caller
        .require(ApiScope::SessionsRead)
        .map_err(query_error)?;
    let live = match prefetched {
        Some(prefetched) => prefetched.clone()?,
        None => caller
            .auth
            .sessions()
            .list(caller.actor(), holder_id)
            .await
            .map_err(query_error)?,
    };
    Ok(Some(
        live.into_iter()
            .map(|session| {
                SessionNode::new(session.record, caller.principal).expiring_at(session.expires_at)
            })
            .collect(),
    ))
}

/// A domain failure of a query field, as a GraphQL error: the message, and `extensions.code`
/// (`NOT_FOUND`, `FORBIDDEN`, `BAD_REQUEST`); an unavailable database as in mutations.
pub(super) fn query_error(err: DomainError) -> async_graphql::Error {
    let (code, message) = match err {
        DomainError::NotFound(msg) => ("NOT_FOUND", msg),
        DomainError::AccessDenied(msg) => ("FORBIDDEN", msg),
        DomainError::InvalidInput(msg) | DomainError::Conflict(msg) => ("BAD_REQUEST", msg),
        DomainError::Unavailable(cause) => return store_unavailable(cause),
        other => {
            tracing::error!(error = %other, "query failed");
            return async_graphql::Error::new("internal error");
        }
    };
    async_graphql::Error::new(message).extend_with(|_, extensions| extensions.set("code", code))
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub(super) fn timestamp(ms: i64) -> String {
    let since = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since).to_string()
}

/// A session (one refresh token) as its user sees it. Never its secret or hash.
pub struct SessionNode {
    record: SessionRecord,
    current: bool,
    expires_at: Option<i64>,
}

impl SessionNode {
    pub(super) fn new(record: SessionRecord, caller: &Principal) -> Self {
        let current = record.id == caller.claims.sid;
        Self {
            record,
            current,
            expires_at: None,
        }
    }

    pub(super) fn expiring_at(self, expires_at: Option<i64>) -> Self {
        Self { expires_at, ..self }
    }
}

#[Object(name = "Session")]
impl SessionNode {
    /// The refresh token's id (a UUID): what `revokeSession` takes.
    async fn id(&self) -> ID {
        ID(self.record.id.clone())
    }
    /// "CLI login", "Device login", or the name given when the token was minted.
    async fn name(&self) -> Option<&str> {
        self.record.name.as_deref()
    }
    /// The OAuth client the token belongs to.
    async fn client_id(&self) -> &str {
        &self.record.client_id
    }
    /// RFC 3339, UTC.
    async fn created_at(&self) -> String {
        timestamp(self.record.created_at)
    }
    /// When the token was last exchanged for an access token (RFC 3339, UTC). Written in
    /// batches: up to a minute (plus a few seconds) behind.
    async fn last_used_at(&self) -> Option<String> {
        self.record.last_used_at.map(timestamp)
    }
    /// The address it was last used from.
    async fn last_used_address(&self) -> Option<&str> {
        self.record.last_used_addr.as_deref()
    }
    /// Whether the access token of this request was issued from this session.
    async fn current(&self) -> bool {
        self.current
    }
    /// When this session ends if nothing else ends it first (RFC 3339, UTC): the earlier of
    /// the token's own expiry and the organization's session policy (an idle expiry moves on
    /// with each use); null when neither applies.
    async fn expires_at(&self) -> Option<String> {
        self.expires_at.or(self.record.expires_at).map(timestamp)
    }
    /// The API scopes the token is restricted to; null when it is not (its principal's role
    /// decides).
    async fn scopes(&self) -> Option<Vec<String>> {
        TokenScopes::parse(&self.record.scope).names()
    }
    /// Whether it was minted by name (`createToken`): its name is unique among its
    /// principal's live tokens.
    async fn named(&self) -> bool {
        self.record.named
    }
}

/// An organization's session policy, in whole days; null means that limit is off.
pub struct SessionPolicyNode(PolicyDays);

#[Object(name = "SessionPolicy")]
impl SessionPolicyNode {
    /// Refresh tokens not used for this many days stop working; null: no idle expiry.
    async fn idle_expiry_days(&self) -> Option<i64> {
        self.0.idle_expiry_days
    }
    /// Refresh tokens older than this many days stop working; null: no maximum age.
    async fn max_age_days(&self) -> Option<i64> {
        self.0.max_age_days
    }
}

pub struct OrganizationNode(Organization);

#[Object(name = "Organization")]
impl OrganizationNode {
    async fn id(&self) -> ID {
        ID(public_id("Organization", &self.0.id))
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn tenant_id(&self) -> &str {
        &self.0.tenant_id
    }

    /// How long refresh tokens of this organization live (Owners and Admins; null with a
    /// `FORBIDDEN` error for anyone else). Off by default.
    async fn session_policy(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<SessionPolicyNode>> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::OrgAdmin).map_err(query_error)?;
        let policy = caller
            .auth
            .policies()
            .read(&caller.principal.user)
            .await
            .map_err(query_error)?;
        Ok(Some(SessionPolicyNode(PolicyDays::of(policy))))
    }

    /// The longest a token minted by name (`createToken`) may live here (Owners and Admins;
    /// null with a `FORBIDDEN` error for anyone else).
    async fn token_policy(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<TokenPolicy>> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::OrgAdmin).map_err(query_error)?;
        let max_lifetime_days = caller
            .auth
            .policies()
            .read_token_policy(&caller.principal.user)
            .await
            .map_err(query_error)?;
        Ok(Some(TokenPolicy { max_lifetime_days }))
    }

    /// Active users, oldest first, in pages (`after` is a previous page's `endCursor`; an
    /// empty string means the first page).
    #[graphql(complexity = "page_cost(first, PAGE_SIZE, child_complexity)")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        first: Option<i32>,
    ) -> async_graphql::Result<UserConnection> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::UsersRead).map_err(query_error)?;
        let limit = first.map_or(PAGE_SIZE, |n| i64::from(n).clamp(1, PAGE_SIZE));
        let position = match after.as_deref().filter(|a| !a.is_empty()) {
            None => None,
            Some(cursor) => Some(
                decode_cursor(cursor).ok_or_else(|| async_graphql::Error::new("invalid cursor"))?,
            ),
        };
        let page = caller
            .auth
            .accounts()
            .users_page(&self.0.id, position, limit)
            .await
            .map_err(query_error)?;
        let end_cursor = page
            .users
            .last()
            .map(|u| encode_cursor(u.created_at, &u.id));
        let mut nodes: Vec<UserNode> = page
            .users
            .into_iter()
            .map(|user| UserNode::new(user, self.0.clone()))
            .collect();
        let members: Vec<User> = nodes.iter().map(|node| node.user.clone()).collect();
        let wanted = ctx.look_ahead().field("nodes").field("sessions").exists();
        for (node, sessions) in nodes
            .iter_mut()
            .zip(prefetch_sessions(ctx, &members, wanted).await?)
        {
            node.sessions = sessions;
        }
        Ok(UserConnection {
            nodes,
            page_info: PageInfo {
                has_next_page: page.has_next_page,
                end_cursor,
            },
        })
    }
}

fn encode_cursor(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (created_at, id) = text.split_once(':')?;
    Some((created_at.parse().ok()?, id.to_owned()))
}

#[derive(SimpleObject)]
pub struct UserConnection {
    nodes: Vec<UserNode>,
    page_info: PageInfo,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

#[derive(SimpleObject)]
#[graphql(name = "Customer")]
pub struct CustomerNode {
    id: ID,
    name: String,
}

pub struct RoleNode(pub(super) Role);

#[Object(name = "Role")]
impl RoleNode {
    async fn id(&self) -> ID {
        ID(public_id("Role", self.0.key()))
    }
    async fn name(&self) -> &str {
        self.0.name()
    }
    async fn description(&self) -> &str {
        self.0.description()
    }
}

/// An organization's limit on tokens minted by name.
#[derive(SimpleObject)]
pub struct TokenPolicy {
    /// The longest such a token may live, in days; null: no maximum.
    pub(super) max_lifetime_days: Option<i64>,
}

#[derive(SimpleObject)]
#[graphql(name = "UserTenantConnection")]
pub struct TenantConnection {
    nodes: Vec<TenantNode>,
}

/// A tenant the caller can use (`tenant_id` of `/auth/refresh` and `/oauth/token`).
#[derive(SimpleObject)]
#[graphql(name = "UserTenant")]
pub struct TenantNode {
    tenant_id: String,
    url: String,
    org_name: String,
    aws_region: String,
    system_suspended: bool,
}

#[derive(InputObject)]
pub struct CreateOrganizationUserInput {
    name: Option<String>,
    email: String,
    /// A role id from `organizationRoles` (its name is accepted too).
    role: ID,
    external_id: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteUserInput {
    id: ID,
}

#[derive(InputObject)]
pub struct UpdateUserInput {
    id: ID,
    name: Option<String>,
    phone: Option<String>,
    dark_mode: Option<bool>,
    dark_mode_sync_with_os: Option<bool>,
    /// A new role: a role id from `organizationRoles` (its name is accepted too). Owners and
    /// Admins only; only Owners make Owners; the last Owner keeps the role.
    role: Option<ID>,
}

#[derive(InputObject)]
pub struct CreateUserInvitationInput {
    id: ID,
}

#[derive(SimpleObject, Default)]
pub struct CreateOrganizationUserPayload {
    user: Option<UserNode>,
    /// A single-use link where the new user sets a password (valid 7 days).
    invitation_url: Option<String>,
    errors: Vec<FieldError>,
}

#[derive(SimpleObject, Default)]
pub struct UserPayload {
    user: Option<UserNode>,
    errors: Vec<FieldError>,
}

impl UserPayload {
    /// The payload of a user mutation: the user, or the problem reported against `field`.
    fn from_result(
        result: Result<User, DomainError>,
        org: &Organization,
        field: &str,
    ) -> async_graphql::Result<Self> {
        Ok(match result {
            Ok(user) => UserPayload {
                user: Some(UserNode::new(user, org.clone())),
                errors: Vec::new(),
            },
            Err(err) => UserPayload {
                user: None,
                errors: payload_errors(err, field)?,
            },
        })
    }
}

#[derive(InputObject)]
pub struct RevokeSessionInput {
    /// A session id from `sessions`.
    id: ID,
}

#[derive(InputObject)]
pub struct RevokeAllSessionsInput {
    /// Whose sessions; absent means your own.
    user_id: Option<ID>,
}

#[derive(SimpleObject, Default)]
pub struct RevokeSessionPayload {
    /// The session that was ended.
    session: Option<SessionNode>,
    errors: Vec<FieldError>,
}

#[derive(SimpleObject, Default)]
pub struct RevokeAllSessionsPayload {
    /// Whose sessions were ended.
    user: Option<UserNode>,
    errors: Vec<FieldError>,
}

#[derive(InputObject)]
pub struct UpdateSessionPolicyInput {
    /// Days a refresh token may go unused; null turns the limit off, absent keeps it.
    idle_expiry_days: MaybeUndefined<i64>,
    /// Days a refresh token may live; null turns the limit off, absent keeps it.
    max_age_days: MaybeUndefined<i64>,
}

#[derive(SimpleObject, Default)]
pub struct UpdateSessionPolicyPayload {
    /// The policy now in force.
    session_policy: Option<SessionPolicyNode>,
    errors: Vec<FieldError>,
}

/// Absent: `None` (keep); null: `Some(None)` (off); a value: `Some(Some(days))`.
fn policy_change(value: MaybeUndefined<i64>) -> Option<Option<i64>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(days) => Some(Some(days)),
    }
}

#[derive(SimpleObject, Default)]
pub struct CreateUserInvitationPayload {
    url: Option<String>,
    errors: Vec<FieldError>,
}

pub(super) fn parse_role(id: &ID) -> Result<Role, DomainError> {
    parse_public_id("Role", id)
        .as_deref()
        .unwrap_or(id.as_str())
        .parse()
}

fn invitation_url(auth: &AuthService, token: &str) -> String {
    format!("{}/invite?token={token}", auth.settings().issuer)
}

#[derive(Default)]
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Adds a user to the caller's organization (Owners and Admins).
    async fn create_organization_user(
        &self,
        ctx: &Context<'_>,
        input: CreateOrganizationUserInput,
    ) -> async_graphql::Result<CreateOrganizationUserPayload> {
        let caller = caller(ctx)?;
        if let Err(err) = caller.require(ApiScope::UsersWrite) {
            return Ok(CreateOrganizationUserPayload {
                errors: payload_errors(err, "__all__")?,
                ..Default::default()
            });
        }
        let accounts = caller.auth.accounts();
        let role = match parse_role(&input.role) {
            Ok(role) => role,
            Err(err) => {
                return Ok(CreateOrganizationUserPayload {
                    errors: payload_errors(err, "role")?,
                    ..Default::default()
                });
            }
        };
        let draft = UserDraft {
            email: input.email,
            name: input.name,
            role,
            password: None,
            external_id: input.external_id,
        };
        let created = accounts
            .create_member(
                &caller.principal.user,
                &caller.principal.org,
                draft,
                &caller.meta,
            )
            .await;
        let user = match created {
            Ok(user) => user,
            Err(err) => {
                return Ok(CreateOrganizationUserPayload {
                    errors: payload_errors(err, "email")?,
                    ..Default::default()
                });
            }
        };
        // A person new here gets an invitation to set their password; one who signs in
        // already was offered a membership, which they accept after signing in.
        let invitation = if user.joined_at.is_some() {
            match deliver_invitation(&caller, &user).await {
                Ok(url) => url,
                Err(err) => {
                    tracing::warn!(error = %err, "user created, but the invitation could not be made");
                    None
                }
            }
        } else {
            if let Some(mailer) = caller.mail.clone() {
                let mail = crate::mail::membership_offer(
                    &user.email,
                    &caller.principal.org.name,
                    &caller.auth.settings().issuer,
                );
                tokio::spawn(async move {
                    if let Err(err) = mailer.send(mail).await {
                        tracing::warn!(error = %err, "could not send a membership offer");
                    }
                });
            }
            None
        };
        Ok(CreateOrganizationUserPayload {
            user: Some(UserNode::new(user, caller.principal.org.clone())),
            invitation_url: invitation,
            errors: Vec::new(),
        })
    }

    /// Removes a user from the organization; all their tokens stop working at once.
    async fn delete_user(
        &self,
        ctx: &Context<'_>,
        input: DeleteUserInput,
    ) -> async_graphql::Result<UserPayload> {
        let caller = caller(ctx)?;
        let result = match caller
            .require(ApiScope::UsersWrite)
            .and_then(|()| user_id_from(&input.id))
        {
            Ok(id) => {
                caller
                    .auth
                    .accounts()
                    .delete_member(&caller.principal.user, &id, &caller.meta)
                    .await
            }
            Err(err) => Err(err),
        };
        UserPayload::from_result(result, &caller.principal.org, "id")
    }

    /// Changes a user's profile: your own, or (Owners and Admins) another member's.
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        input: UpdateUserInput,
    ) -> async_graphql::Result<UserPayload> {
        let caller = caller(ctx)?;
        let changes = ProfileChanges {
            name: input.name,
            phone: input.phone,
            dark_mode: input.dark_mode,
            dark_mode_sync_with_os: input.dark_mode_sync_with_os,
            role: None,
        };
        let role = match input.role.as_ref().map(parse_role).transpose() {
            Ok(role) => role,
            Err(err) => return UserPayload::from_result(Err(err), &caller.principal.org, "role"),
        };
        let result = match user_id_from(&input.id) {
            Ok(id) => {
                // Your own profile needs profile:write; anyone else's, or a role, users:write.
                let needed = if id == caller.principal.user.id && role.is_none() {
                    ApiScope::ProfileWrite
                } else {
                    ApiScope::UsersWrite
                };
                match caller.require(needed) {
                    Ok(()) => {
                        caller
                            .auth
                            .accounts()
                            .update_member(&caller.principal.user, &id, changes, role, &caller.meta)
                            .await
                    }
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(err),
        };
        let field = if input.role.is_some() { "role" } else { "name" };
        UserPayload::from_result(result, &caller.principal.org, field)
    }

    /// Ends one session: its refresh token, and the access tokens issued from it, stop
    /// working at once. Your own, or (Owners and Admins) a member's; Admins not Owners'.
    async fn revoke_session(
        &self,
        ctx: &Context<'_>,
        input: RevokeSessionInput,
    ) -> async_graphql::Result<RevokeSessionPayload> {
        let caller = caller(ctx)?;
        let revoked = match caller.require(ApiScope::SessionsWrite) {
            Ok(()) => {
                caller
                    .auth
                    .sessions()
                    .revoke(&caller.principal.user, &input.id, &caller.meta)
                    .await
            }
            Err(err) => Err(err),
        };
        Ok(match revoked {
            Ok(record) => RevokeSessionPayload {
                session: Some(SessionNode::new(record, caller.principal)),
                errors: Vec::new(),
            },
            Err(err) => RevokeSessionPayload {
                session: None,
                errors: payload_errors(err, "id")?,
            },
        })
    }

    /// Ends every session of a user, and every access token, at once (what `/auth/revoke`
    /// does): your own without `userId`, or (Owners and Admins) a member's.
    async fn revoke_all_sessions(
        &self,
        ctx: &Context<'_>,
        input: RevokeAllSessionsInput,
    ) -> async_graphql::Result<RevokeAllSessionsPayload> {
        let caller = caller(ctx)?;
        let actor = &caller.principal.user;
        let result = match &input.user_id {
            None => Ok(actor.id.clone()),
            Some(id) => user_id_from(id),
        };
        let result = caller.require(ApiScope::SessionsWrite).and(result);
        let result = match result {
            Ok(id) => {
                caller
                    .auth
                    .sessions()
                    .revoke_all(actor, &id, &caller.meta)
                    .await
            }
            Err(err) => Err(err),
        };
        Ok(match result {
            Ok(user) => RevokeAllSessionsPayload {
                user: Some(UserNode::new(user, caller.principal.org.clone())),
                errors: Vec::new(),
            },
            Err(err) => RevokeAllSessionsPayload {
                user: None,
                errors: payload_errors(err, "userId")?,
            },
        })
    }

    /// Changes the organization's session policy (Owners only). Applies at once to every
    /// refresh token of the organization, including those issued before.
    async fn update_session_policy(
        &self,
        ctx: &Context<'_>,
        input: UpdateSessionPolicyInput,
    ) -> async_graphql::Result<UpdateSessionPolicyPayload> {
        let caller = caller(ctx)?;
        if let Err(err) = caller.require(ApiScope::OrgAdmin) {
            return Ok(UpdateSessionPolicyPayload {
                session_policy: None,
                errors: payload_errors(err, "__all__")?,
            });
        }
        let update = PolicyUpdate {
            idle_expiry_days: policy_change(input.idle_expiry_days),
            max_age_days: policy_change(input.max_age_days),
        };
        let checked = match update.check() {
            Ok(checked) => checked,
            Err((field, err)) => {
                return Ok(UpdateSessionPolicyPayload {
                    session_policy: None,
                    errors: payload_errors(err, field)?,
                });
            }
        };
        let updated = caller
            .auth
            .policies()
            .update(&caller.principal.user, checked, &caller.meta)
            .await;
        Ok(match updated {
            Ok(policy) => UpdateSessionPolicyPayload {
                session_policy: Some(SessionPolicyNode(PolicyDays::of(policy))),
                errors: Vec::new(),
            },
            Err(err) => UpdateSessionPolicyPayload {
                session_policy: None,
                errors: payload_errors(err, "__all__")?,
            },
        })
    }

    /// A new single-use link for a member to set their password (Owners and Admins).
    async fn create_user_invitation(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInvitationInput,
    ) -> async_graphql::Result<CreateUserInvitationPayload> {
        let caller = caller(ctx)?;
        let result = match caller
            .require(ApiScope::UsersWrite)
            .and_then(|()| user_id_from(&input.id))
        {
            Ok(id) => match caller
                .auth
                .accounts()
                .managed_member(&caller.principal.user, &id, "invite")
                .await
            {
                Ok(member) => deliver_invitation(&caller, &member).await,
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        Ok(match result {
            Ok(url) => CreateUserInvitationPayload {
                url,
                errors: Vec::new(),
            },
            Err(err) => CreateUserInvitationPayload {
                url: None,
                errors: payload_errors(err, "id")?,
            },
        })
    }
}
