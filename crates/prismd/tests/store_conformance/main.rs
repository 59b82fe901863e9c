//! Store conformance: every contract of the storage traits, checked the same way against
//! both backends (one file per area; this one holds the harness and the helpers they share).
//! Each test runs twice, once on a fresh SQLite file in a temporary directory and once on a
//! fresh PostgreSQL database created for it (and dropped afterwards) through the server named
//! by `PRISM_TEST_POSTGRES_URL`. Without that variable the PostgreSQL half fails:
//! a backend that was never tested must not look green.

use std::future::Future;
use std::sync::Arc;

use prismd::store::{
    self, AddedMember, AttemptPolicy, AuditBind, AuditEvent, AuditQuery, AuditRecord, Backend,
    CacheSettings, CacheStats, Change, CodeRedemption, Delivery, Garbage, Identity, JoinExisting,
    KeyDeletion, MAX_AUDIT_PAGE, NewAuthorizationCode, NewDeviceCode, NewOrganization,
    NewRefreshToken, NewUser, OpenOptions, Organization, PrincipalRecord, PrivateKeyReplacement,
    ProfileChanges, RefreshGrant, Refusal, RevokeDecision, RevokedAll, SessionPolicy,
    SessionRecord, SigningKeyRecord, Store, StoreError, TokenUse, User,
};
use sqlx::Connection;

mod access;
mod audit;
mod cache;
mod changes;
mod cleanup;
mod identities;
mod keys;
mod limits;
mod organizations;
mod resource_servers;
mod sign_in;
mod tokens;
mod trust;
mod users;

use access::*;
use audit::*;
use cache::*;
use changes::*;
use cleanup::*;
use identities::*;
use keys::*;
use limits::*;
use organizations::*;
use resource_servers::*;
use sign_in::*;
use tokens::*;
use trust::*;
use users::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const POSTGRES_URL_VAR: &str = "PRISM_TEST_POSTGRES_URL";

type TestError = Box<dyn std::error::Error>;

/// A fixed clock: the stores never read the time themselves.
const T0: i64 = 1_700_000_000_000;

/// One fresh database and a store open on it.
#[derive(Clone)]
struct Db {
    store: Arc<dyn Store>,
    backend: Backend,
}

impl Db {
    /// `SELECT COUNT(*) ...` behind the store's back: how many rows a table really holds.
    async fn count(&self, sql: &'static str) -> Result<i64, Box<dyn std::error::Error>> {
        Ok(match &self.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
                conn.close().await?;
                count
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
                conn.close().await?;
                count
            }
        })
    }

    /// Like [`Db::count`], with one text bind (`$1`).
    async fn count_bind(
        &self,
        sql: &'static str,
        bind: &str,
    ) -> Result<i64, Box<dyn std::error::Error>> {
        Ok(match &self.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let count = sqlx::query_scalar(sql)
                    .bind(bind)
                    .fetch_one(&mut conn)
                    .await?;
                conn.close().await?;
                count
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let count = sqlx::query_scalar(sql)
                    .bind(bind)
                    .fetch_one(&mut conn)
                    .await?;
                conn.close().await?;
                count
            }
        })
    }

    /// Runs one statement on the database behind the store's back, to set up a state the
    /// trait cannot (for example an empty table again).
    async fn execute_raw(&self, sql: &'static str) -> TestResult {
        match &self.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                sqlx::query(sql).execute(&mut conn).await?;
                conn.close().await?;
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query(sql).execute(&mut conn).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    /// A second, independent store on the same database: another replica (PostgreSQL) or an
    /// admin command beside the server (SQLite).
    async fn another(&self) -> Result<Arc<dyn Store>, StoreError> {
        store::open(&self.backend, OpenOptions::default()).await
    }
}

/// The newest `limit` audit events, newest first, read page by page as the trail's readers
/// read it.
async fn recent_events(store: &dyn Store, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
    let mut events: Vec<AuditRecord> = Vec::new();
    let mut query = AuditQuery::default();
    while events.len() < limit {
        let page = store.audit_events_page(&query, MAX_AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        query.before_id = Some(last.id);
        events.extend(page);
    }
    events.truncate(limit);
    Ok(events)
}

enum Cleanup {
    /// Kept only so the directory lives until the test ends.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

async fn fresh(kind: Kind) -> Result<(Db, Cleanup), Box<dyn std::error::Error>> {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir()?;
            let backend = Backend::from_url(None, dir.path())?;
            let store = store::open(&backend, OpenOptions::default()).await?;
            Ok((Db { store, backend }, Cleanup::Sqlite { _dir: dir }))
        }
        Kind::Postgres => {
            let admin_url = std::env::var(POSTGRES_URL_VAR).map_err(|_| {
                format!(
                    "{POSTGRES_URL_VAR} is not set, so the PostgreSQL half of the store \
                     conformance suite cannot run. Set it to a server where this user may \
                     CREATE DATABASE, e.g. {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/test \
                     (./scripts/test.sh and .ci/run set it when PostgreSQL answers locally)"
                )
            })?;
            let name = format!("prism_conf_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
            let mut url = url::Url::parse(&admin_url)?;
            url.set_path(&name);
            let backend = Backend::from_url(Some(url.as_str()), std::path::Path::new("."))?;
            let store = store::open(&backend, OpenOptions::default()).await?;
            Ok((Db { store, backend }, Cleanup::Postgres { admin_url, name }))
        }
    }
}

/// Runs one test body on a fresh database of `kind`, then removes the database whatever the
/// outcome.
async fn run<F, Fut>(kind: Kind, test: F) -> TestResult
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = TestResult>,
{
    let (db, cleanup) = fresh(kind).await?;
    let store = db.store.clone();
    let outcome = test(db).await;
    store.close().await;
    if let Cleanup::Postgres { admin_url, name } = cleanup {
        let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
    }
    outcome
}

/// Declares each test once per backend: `sqlite::name` and `postgres::name`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::run(super::Kind::Sqlite, super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::run(super::Kind::Postgres, super::$name).await
                }
            )*
        }
    };
}

conformance!(
    bootstrap_once,
    bootstrap_races,
    organizations,
    add_member_conflicts_and_readd,
    users_page_order_and_cursor,
    members_profiles_and_lookups,
    refresh_token_insert_and_find,
    revoke_all_one_write,
    revoke_all_races,
    revoke_all_many_at_once,
    revoke_all_by_token_decides_at_the_write,
    revoke_all_by_token_many_at_once,
    revokes_and_other_writes_at_once_all_land,
    close_answers_the_revokes_already_queued,
    revokes_seen_by_every_next_read,
    remove_user_keeps_an_owner,
    remove_user_races_keep_an_owner,
    authorization_code_single_use,
    authorization_code_replay_before_token,
    authorization_code_redeem_races,
    browser_sessions,
    invitations_single_use,
    device_codes,
    device_code_redeem_races,
    live_device_codes_and_unknown_polls_only_read,
    signing_key_created_once,
    signing_key_races,
    signing_key_rotation,
    signing_key_rotation_races,
    signing_key_rotation_if_stale,
    signing_key_stale_rotation_races,
    signing_key_revocation,
    private_key_replacement,
    audit_rows,
    token_uses_and_ping,
    sessions_live_only_newest_first,
    changes_reach_other_processes,
    cache_forgets_what_changes_invalidate,
    cache_invalidation_marks_stay_bounded,
    cache_forgets_at_once_revoke_all_by_token,
    cache_forgets_at_once_remove_user,
    cache_forgets_at_once_set_identity_password,
    cache_forgets_at_once_revoke_session,
    cache_forgets_at_once_update_profile,
    cleanup_deletes_garbage_only,
    cleanup_deletes_in_batches,
    cleanup_deletes_dead_password_resets,
    cleanup_lock_takes_turns,
    cleanup_statements_use_indexes,
    attempt_counters,
    attempt_counters_shared_and_racing,
    audit_query_filters_pages_and_orgs,
    audit_query_pages_are_bounded,
    audit_query_uses_its_index,
    role_changes_keep_an_owner,
    session_policies,
    profile_changes_follow_actor_rules,
    removals_follow_actor_rules,
    removing_oneself_without_the_role_is_forbidden,
    add_member_joins_existing_identities,
    add_member_follows_actor_rules,
    add_member_races_make_one_identity,
    identities_by_id_and_email,
    memberships_joined_and_pending,
    accept_membership_needs_a_verified_email,
    set_identity_password_for_every_member,
    invitations_verify_when_emailed,
    password_resets_single_use,
    identity_upgrade_notices_until_a_password,
    refresh_tokens_move_between_members,
    revoke_all_by_token_moves_every_member,
    revoke_all_by_token_siblings_at_once,
    cache_forgets_siblings_at_once_revoke_all_by_token,
    cache_forgets_at_once_move_refresh_token,
    service_accounts_follow_actor_rules,
    service_account_updates_follow_actor_rules,
    org_scopes_and_grants,
    token_lifetime_max_round_trip,
    named_tokens_unique_while_live,
    named_token_names_race,
    expiry_notices_claimed_once,
    refresh_grants_carry_held_org_scopes,
    trust_policies_follow_actor_rules,
    trust_candidates_of_an_issuer,
    exchanged_tokens_are_spent_once,
    exchange_sessions_end_with_their_policy,
    cleanup_deletes_expired_exchanges_only,
    concurrent_exchanges_each_as_if_alone,
    resource_servers_follow_actor_rules,
    cache_forgets_resource_servers_at_once,
    principals_carry_the_grants_of_now,
);

// ---- helpers ----------------------------------------------------------------------------

fn audit(action: &'static str, at: i64) -> AuditEvent {
    AuditEvent {
        at,
        action,
        actor: "test".into(),
        org_id: None,
        subject_user_id: None,
        address: Some("127.0.0.1".into()),
        user_agent: None,
        detail: Some(r#"{"k":1}"#.into()),
    }
}

/// An audit event about one user, as every write that changes a user's standing records.
fn audit_about(action: &'static str, at: i64, user: &User) -> AuditEvent {
    AuditEvent {
        subject_user_id: Some(user.id.clone()),
        ..audit(action, at)
    }
}

fn new_org(name: &str, at: i64) -> NewOrganization {
    NewOrganization {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.into(),
        tenant_id: format!("tenant-{}", uuid::Uuid::new_v4().simple()),
        created_at: at,
    }
}

/// A new person: an email no identity has yet (an existing one is refused).
fn new_user(org_id: &str, email: &str, role: &str, at: i64) -> NewUser {
    NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: org_id.into(),
        email: email.into(),
        name: email.into(),
        role: role.into(),
        password_hash: None,
        external_id: None,
        created_at: at,
        join_existing: JoinExisting::Refuse,
        invited_by_org: None,
    }
}

/// [`new_user`] for an identity that may exist already, joining as `join`.
fn joining(org_id: &str, email: &str, role: &str, at: i64, join: JoinExisting) -> NewUser {
    NewUser {
        join_existing: join,
        ..new_user(org_id, email, role, at)
    }
}

fn hash(seed: u8) -> [u8; 32] {
    [seed; 32]
}

/// Bootstraps an organization with one Owner.
async fn org_with_owner(
    store: &dyn Store,
) -> Result<(Organization, User), Box<dyn std::error::Error>> {
    let org = new_org("Org", T0);
    let owner = new_user(&org.id, "owner@example.com", "owner", T0);
    assert!(store.bootstrap(org, owner, audit("bootstrap", T0)).await?);
    let org = store.default_organization().await?.ok_or("no org")?;
    let owner = store
        .find_active_user_by_email(&org.id, "owner@example.com")
        .await?
        .ok_or("no owner")?;
    Ok((org, owner))
}

/// An operator adds a new person to `org` (joined at once, with an identity of their own).
async fn add_user(
    store: &dyn Store,
    org: &Organization,
    email: &str,
    role: &str,
    at: i64,
) -> Result<User, TestError> {
    Ok(added(try_add(store, new_user(&org.id, email, role, at), None).await?)?.user)
}

/// Adds `user` as `actor` would (`None`: an operator), audited as `user.add`.
async fn try_add(
    store: &dyn Store,
    user: NewUser,
    actor: Option<&str>,
) -> Result<Result<AddedMember, Refusal>, StoreError> {
    let at = user.created_at;
    store.add_member(user, actor, audit("user.add", at)).await
}

/// The member an add created, or its refusal as an error.
fn added(outcome: Result<AddedMember, Refusal>) -> Result<AddedMember, TestError> {
    outcome.map_err(|refused| format!("the add was refused: {refused:?}").into())
}

/// The refusal of an add that must be refused.
fn refused(outcome: Result<AddedMember, Refusal>) -> Result<Refusal, TestError> {
    match outcome {
        Ok(added) => Err(format!("the add of {} went through", added.user.email).into()),
        Err(refused) => Ok(refused),
    }
}

/// The identity of a member.
fn identity_of(user: &User) -> Result<String, TestError> {
    Ok(user
        .identity_id
        .clone()
        .ok_or("a member without identity")?)
}

/// A new organization, created.
async fn another_org(store: &dyn Store, name: &str, at: i64) -> Result<Organization, TestError> {
    let org = new_org(name, at);
    store
        .create_organization(org.clone(), audit("org.add", at))
        .await?;
    Ok(store
        .organization_by_tenant(&org.tenant_id)
        .await?
        .ok_or("the new organization is missing")?)
}

fn refresh_token(user: &User, seed: u8, from_code: Option<[u8; 32]>) -> NewRefreshToken {
    NewRefreshToken {
        id: uuid::Uuid::new_v4().to_string(),
        token_hash: hash(seed),
        user_id: user.id.clone(),
        client_id: "client".into(),
        name: Some("ci".into()),
        scope: "openid".into(),
        created_at: T0 + 10,
        from_code,
        named: false,
        expires_at: None,
        created_by: None,
    }
}

fn auth_code(user: &User, seed: u8) -> NewAuthorizationCode {
    NewAuthorizationCode {
        code_hash: hash(seed),
        client_id: "client".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        code_challenge: "challenge".into(),
        scope: "openid".into(),
        nonce: Some("n".into()),
        user_id: user.id.clone(),
        created_at: T0,
        expires_at: T0 + 60_000,
    }
}

fn device_code(seed: u8) -> NewDeviceCode {
    NewDeviceCode {
        device_code_hash: hash(seed),
        user_code_hash: hash(seed.wrapping_add(100)),
        client_id: "client".into(),
        scope: "openid".into(),
        created_at: T0,
        expires_at: T0 + 600_000,
        interval_secs: 5,
    }
}

fn signing_key(kid: &str, at: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        algorithm: "EdDSA".into(),
        private_key: vec![1, 2, 3, 0, 255],
        public_key: vec![4, 5, 6],
        created_at: at,
        retired_at: None,
    }
}
