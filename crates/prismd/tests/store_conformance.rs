//! Store conformance: every contract of the `Store` trait, checked the same way against both
//! backends. Each test runs twice, once on a fresh SQLite file in a temporary directory and
//! once on a fresh PostgreSQL database created for it (and dropped afterwards) through the
//! server named by `PRISM_TEST_POSTGRES_URL`. Without that variable the PostgreSQL half fails:
//! a backend that was never tested must not look green.

use std::future::Future;
use std::sync::Arc;

use prismd::store::{
    self, AttemptPolicy, AuditBind, AuditEvent, AuditQuery, AuditRecord, Backend, CacheSettings,
    CacheStats, Change, CodeRedemption, Garbage, MAX_AUDIT_PAGE, NewAuthorizationCode,
    NewDeviceCode, NewOrganization, NewRefreshToken, NewUser, OpenOptions, Organization,
    PrincipalRecord, PrivateKeyReplacement, ProfileChanges, RefreshGrant, Removal, RevokeDecision,
    RevokedAll, SessionPolicy, SessionRecord, SigningKeyRecord, Store, StoreError, TokenUse, User,
};
use sqlx::Connection;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const POSTGRES_URL_VAR: &str = "PRISM_TEST_POSTGRES_URL";

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
    create_user_conflicts_and_readd,
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
    signing_key_created_once,
    signing_key_races,
    signing_key_rotation,
    signing_key_rotation_races,
    signing_key_rotation_if_stale,
    signing_key_stale_rotation_races,
    private_key_replacement,
    audit_rows,
    token_uses_and_ping,
    sessions_live_only_newest_first,
    changes_reach_other_processes,
    cache_forgets_what_changes_invalidate,
    cache_invalidation_marks_stay_bounded,
    cache_forgets_at_once_revoke_all_by_token,
    cache_forgets_at_once_remove_user,
    cache_forgets_at_once_set_password_hash,
    cache_forgets_at_once_revoke_session,
    cache_forgets_at_once_update_profile,
    cleanup_deletes_garbage_only,
    cleanup_deletes_in_batches,
    cleanup_lock_takes_turns,
    cleanup_statements_use_indexes,
    attempt_counters,
    attempt_counters_shared_and_racing,
    audit_query_filters_pages_and_orgs,
    audit_query_pages_are_bounded,
    audit_query_uses_its_index,
    role_changes_keep_an_owner,
    session_policies,
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

async fn add_user(
    store: &dyn Store,
    org: &Organization,
    email: &str,
    role: &str,
    at: i64,
) -> Result<User, StoreError> {
    store
        .create_user(new_user(&org.id, email, role, at), audit("user.add", at))
        .await
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

// ---- organizations and bootstrap --------------------------------------------------------

async fn bootstrap_once(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert_eq!(store.default_organization().await?, None);
    let (org, owner) = org_with_owner(store).await?;
    assert_eq!(owner.role, "owner");
    assert_eq!(owner.token_epoch, 0);
    assert!(owner.dark_mode_sync_with_os);
    assert!(!owner.dark_mode);
    let again = new_org("Second", T0 + 1);
    let owner2 = new_user(&again.id, "other@example.com", "owner", T0 + 1);
    assert!(
        !store
            .bootstrap(again, owner2, audit("bootstrap", T0 + 1))
            .await?
    );
    assert_eq!(store.list_organizations().await?, vec![org]);
    Ok(())
}

async fn bootstrap_races(db: Db) -> TestResult {
    // Two replicas start on an empty database at the same moment.
    let other = db.another().await?;
    let (a_org, b_org) = (new_org("A", T0), new_org("B", T0));
    let a_owner = new_user(&a_org.id, "a@example.com", "owner", T0);
    let b_owner = new_user(&b_org.id, "b@example.com", "owner", T0);
    let (a, b) = tokio::join!(
        db.store.bootstrap(a_org, a_owner, audit("bootstrap", T0)),
        other.bootstrap(b_org, b_owner, audit("bootstrap", T0)),
    );
    other.close().await;
    assert_eq!(u8::from(a?) + u8::from(b?), 1, "exactly one bootstrap wins");
    assert_eq!(db.store.list_organizations().await?.len(), 1);
    let org = db.store.default_organization().await?.ok_or("no org")?;
    assert_eq!(db.store.list_users(&org.id, true).await?.len(), 1);
    Ok(())
}

async fn organizations(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (first, _) = org_with_owner(store).await?;
    let second = new_org("Second", T0 + 5);
    store
        .create_organization(second.clone(), audit("org.add", T0 + 5))
        .await?;
    let all = store.list_organizations().await?;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], first, "oldest first");
    assert_eq!(all[1].tenant_id, second.tenant_id);
    assert_eq!(store.default_organization().await?, Some(first.clone()));
    let found = store.organization_by_tenant(&second.tenant_id).await?;
    assert_eq!(found.map(|o| o.id), Some(second.id));
    assert_eq!(store.organization_by_tenant("nope").await?, None);
    Ok(())
}

// ---- users --------------------------------------------------------------------------------

async fn create_user_conflicts_and_readd(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _) = org_with_owner(store).await?;
    let user = add_user(store, &org, "a@example.com", "admin", T0 + 1).await?;
    assert!(matches!(
        add_user(store, &org, "a@example.com", "guest", T0 + 2).await,
        Err(StoreError::Conflict(_))
    ));
    // The same address in another organization is another account.
    let other = new_org("Other", T0);
    store
        .create_organization(other.clone(), audit("org.add", T0))
        .await?;
    let elsewhere = store
        .create_user(
            new_user(&other.id, "a@example.com", "owner", T0 + 3),
            audit("user.add", T0 + 3),
        )
        .await?;
    assert_eq!(
        store
            .remove_user(&user.id, T0 + 4, audit("user.remove", T0 + 4))
            .await?,
        Removal::Removed
    );
    let readded = add_user(store, &org, "a@example.com", "guest", T0 + 5).await?;
    assert_ne!(readded.id, user.id);
    let found = store
        .find_active_user_by_email(&org.id, "a@example.com")
        .await?
        .ok_or("not found")?;
    assert_eq!(found, readded);
    let all = store.list_users(&org.id, true).await?;
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].id, user.id);
    assert_eq!(all[1].removed_at, Some(T0 + 4));
    assert_eq!(all[1].token_epoch, 1, "removal moves the epoch");
    assert_eq!(store.list_users(&org.id, false).await?.len(), 2);
    // Organizations and credentials across tenants.
    let orgs = store.organizations_of_email("a@example.com").await?;
    assert_eq!(orgs.len(), 2);
    let credentials = store.credentials_by_email("a@example.com").await?;
    let ids: Vec<_> = credentials.iter().map(|c| c.user.id.clone()).collect();
    assert_eq!(ids, vec![elsewhere.id, readded.id], "oldest first");
    Ok(())
}

async fn users_page_order_and_cursor(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    // Ties in created_at are broken by id.
    let mut expected = vec![owner];
    for (n, at) in [T0 + 1, T0 + 1, T0 + 1, T0 + 2, T0 + 3]
        .into_iter()
        .enumerate()
    {
        expected.push(add_user(store, &org, &format!("u{n}@example.com"), "guest", at).await?);
    }
    let gone = add_user(store, &org, "gone@example.com", "guest", T0 + 2).await?;
    store
        .remove_user(&gone.id, T0 + 9, audit("user.remove", T0 + 9))
        .await?;
    expected.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.users_page(&org.id, after.clone(), 2).await?;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.clone()));
        seen.extend(page);
    }
    assert_eq!(seen, expected);
    assert!(store.users_page("other-org", None, 10).await?.is_empty());
    Ok(())
}

async fn members_profiles_and_lookups(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    assert_eq!(store.member(&org.id, &owner.id).await?, Some(owner.clone()));
    assert_eq!(store.member("other", &owner.id).await?, None);
    assert_eq!(store.active_user(&owner.id).await?, Some(owner.clone()));
    let changes = ProfileChanges {
        name: Some("New Name".into()),
        dark_mode: Some(true),
        ..Default::default()
    };
    assert!(
        store
            .update_profile(&owner.id, changes, audit("profile", T0 + 7))
            .await?
    );
    let changed = store.active_user(&owner.id).await?.ok_or("gone")?;
    assert_eq!(changed.name, "New Name");
    assert!(changed.dark_mode);
    assert!(changed.dark_mode_sync_with_os, "untouched fields stay");
    assert_eq!(changed.phone, None);
    assert_eq!(changed.updated_at, T0 + 7);
    assert!(
        !store
            .update_profile("nobody", ProfileChanges::default(), audit("profile", T0))
            .await?
    );
    assert!(!store.has_password(&owner.id).await?);
    assert!(
        store
            .set_password_hash(&owner.id, "$argon2id$x", audit("pw", T0 + 8))
            .await?
    );
    assert!(store.has_password(&owner.id).await?);
    assert!(
        !store
            .set_password_hash("nobody", "h", audit("pw", T0))
            .await?
    );
    let credentials = store.credentials_by_email("owner@example.com").await?;
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].password_hash.as_deref(), Some("$argon2id$x"));
    Ok(())
}

// ---- refresh tokens and revocation ------------------------------------------------------

async fn refresh_token_insert_and_find(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let token = refresh_token(&owner, 1, None);
    assert!(
        store
            .insert_refresh_token(token.clone(), audit("token", T0))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_id, token.id);
    assert_eq!(grant.token_epoch, 0);
    assert_eq!(grant.user_epoch, 0);
    assert_eq!(grant.token_revoked_at, None);
    assert_eq!(grant.user_id, owner.id);
    assert_eq!(grant.org_id, org.id);
    assert_eq!(grant.tenant_id, org.tenant_id);
    assert_eq!(grant.client_id, "client");
    assert_eq!(grant.scope, "openid");
    assert!(store.find_refresh_grant(&hash(2)).await?.is_none());

    let principal = store
        .principal(&owner.id, &token.id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.user, owner);
    assert_eq!(principal.org, org);
    assert_eq!(principal.session_revoked_at, Some(None));
    let other_session = store
        .principal(&owner.id, "unknown")
        .await?
        .ok_or("no principal")?;
    assert_eq!(other_session.session_revoked_at, None);
    assert!(store.principal("nobody", &token.id).await?.is_none());

    // One session revoked on its own.
    assert!(
        !store
            .revoke_session(&token.id, "someone-else", audit("rv", T0))
            .await?
    );
    assert!(
        store
            .revoke_session(&token.id, &owner.id, audit("rv", T0 + 20))
            .await?
    );
    assert!(
        !store
            .revoke_session(&token.id, &owner.id, audit("rv", T0 + 21))
            .await?
    );
    let principal = store
        .principal(&owner.id, &token.id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.session_revoked_at, Some(Some(T0 + 20)));
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_revoked_at, Some(T0 + 20));

    // No tokens for removed or unknown users.
    let guest = add_user(store, &org, "g@example.com", "guest", T0 + 1).await?;
    store
        .remove_user(&guest.id, T0 + 2, audit("rm", T0 + 2))
        .await?;
    assert!(
        !store
            .insert_refresh_token(refresh_token(&guest, 3, None), audit("token", T0))
            .await?
    );
    Ok(())
}

async fn revoke_all_one_write(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store
        .insert_refresh_token(refresh_token(&owner, 1, None), audit("t", T0))
        .await?;
    store
        .insert_browser_session(&hash(50), &owner.id, T0, T0 + 1_000_000)
        .await?;
    assert!(
        store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 5))
            .await?
    );
    // A stale epoch: someone else revoked first.
    assert!(
        !store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 6))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (grant.token_epoch, grant.user_epoch),
        (0, 1),
        "the old token is stale"
    );
    assert_eq!(
        grant.token_revoked_at, None,
        "one write: the token row is untouched"
    );
    assert!(
        store.browser_session_user(&hash(50), T0).await?.is_none(),
        "browser signed out"
    );
    // A token minted afterwards lives under the new epoch.
    store
        .insert_refresh_token(refresh_token(&owner, 2, None), audit("t", T0 + 7))
        .await?;
    let grant = store
        .find_refresh_grant(&hash(2))
        .await?
        .ok_or("no grant")?;
    assert_eq!((grant.token_epoch, grant.user_epoch), (1, 1));
    assert!(
        store
            .revoke_all_tokens(&owner.id, 1, audit("revoke-all", T0 + 8))
            .await?
    );
    assert!(
        !store
            .revoke_all_tokens("nobody", 0, audit("revoke-all", T0))
            .await?
    );
    Ok(())
}

/// Many concurrent reads of one grant and its principal, each checked against the expected
/// epoch and session revocation. Enough of them, at once, that every reader connection (and
/// SQLite's direct readers, and the pool behind them when those are busy) serves some.
async fn read_everywhere(
    store: &Arc<dyn Store>,
    user_id: &str,
    session_id: &str,
    epoch: i64,
    revoked_at: Option<i64>,
) -> TestResult {
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (store, user_id, session_id) =
            (store.clone(), user_id.to_owned(), session_id.to_owned());
        reads.spawn(async move {
            let grant = store
                .find_refresh_grant(&hash(1))
                .await?
                .ok_or("no grant")?;
            let principal = store
                .principal(&user_id, &session_id)
                .await?
                .ok_or("no principal")?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                grant.user_epoch,
                grant.token_revoked_at,
                principal.user.token_epoch,
                principal.session_revoked_at,
            ))
        });
    }
    while let Some(read) = reads.join_next().await {
        let read = read?.map_err(|err| err.to_string())?;
        assert_eq!(read, (epoch, revoked_at, epoch, Some(revoked_at)));
    }
    Ok(())
}

/// The revocation guarantee at the store: once a revoke has returned, the next read of the
/// grant or the principal sees it, whichever connection answers, though every one of them
/// has read the same rows just before (none may answer from an older snapshot).
async fn revokes_seen_by_every_next_read(db: Db) -> TestResult {
    let store = db.store.clone();
    let (_, owner) = org_with_owner(store.as_ref()).await?;
    let token = refresh_token(&owner, 1, None);
    assert!(
        store
            .insert_refresh_token(token.clone(), audit("t", T0))
            .await?
    );
    read_everywhere(&store, &owner.id, &token.id, 0, None).await?;
    assert!(
        store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 1))
            .await?
    );
    read_everywhere(&store, &owner.id, &token.id, 1, None).await?;
    assert!(
        store
            .revoke_session(&token.id, &owner.id, audit("rv", T0 + 2))
            .await?
    );
    read_everywhere(&store, &owner.id, &token.id, 1, Some(T0 + 2)).await?;
    Ok(())
}

async fn revoke_all_races(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    let (a, b) = tokio::join!(
        db.store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 1)),
        other.revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 1)),
    );
    other.close().await;
    assert_eq!(
        u8::from(a?) + u8::from(b?),
        1,
        "exactly one revoke moves the epoch"
    );
    let user = db.store.active_user(&owner.id).await?.ok_or("gone")?;
    assert_eq!(user.token_epoch, 1);
    Ok(())
}

/// Many revoke-alls at once (SQLite commits them in groups): each user's epoch moves exactly
/// once, the second revoke of each user with the same expected epoch changes nothing, and
/// every successful revoke has its audit row and nothing else does.
async fn revoke_all_many_at_once(db: Db) -> TestResult {
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    let mut users = Vec::new();
    for n in 0..20_u8 {
        let email = format!("u{n}@example.com");
        let user = add_user(db.store.as_ref(), &org, &email, "member", T0).await?;
        db.store
            .insert_browser_session(&hash(100 + n), &user.id, T0, T0 + 1_000_000)
            .await?;
        users.push(user);
    }
    let bystander = add_user(db.store.as_ref(), &org, "by@example.com", "member", T0).await?;
    db.store
        .insert_browser_session(&hash(99), &bystander.id, T0, T0 + 1_000_000)
        .await?;
    let before = recent_events(db.store.as_ref(), 1000).await?.len();
    let mut revokes = tokio::task::JoinSet::new();
    for user in users.iter().chain(users.iter()) {
        let (store, user_id) = (db.store.clone(), user.id.clone());
        revokes.spawn(async move {
            let event = AuditEvent {
                subject_user_id: Some(user_id.clone()),
                ..audit("tokens.revoked_all", T0 + 1)
            };
            store.revoke_all_tokens(&user_id, 0, event).await
        });
    }
    let mut moved = 0;
    while let Some(outcome) = revokes.join_next().await {
        moved += usize::from(outcome??);
    }
    assert_eq!(moved, users.len(), "one revoke per user moves its epoch");
    for (n, user) in (100_u8..).zip(&users) {
        let now = db.store.active_user(&user.id).await?.ok_or("gone")?;
        assert_eq!(now.token_epoch, 1, "{}", user.email);
        assert_eq!(
            db.store.browser_session_user(&hash(n), T0 + 1).await?,
            None,
            "{}'s browser session outlived the revoke",
            user.email
        );
    }
    assert!(
        db.store
            .browser_session_user(&hash(99), T0 + 1)
            .await?
            .is_some(),
        "a bystander's browser session ended"
    );
    let after = recent_events(db.store.as_ref(), 1000).await?;
    assert_eq!(after.len() - before, users.len());
    assert_one_audit_row_each(&after, &users);
    Ok(())
}

/// Each of `users` is the subject of exactly one of `events`.
fn assert_one_audit_row_each<'a>(
    events: &[store::AuditRecord],
    users: impl IntoIterator<Item = &'a User>,
) {
    for user in users {
        assert_eq!(
            events
                .iter()
                .filter(|event| event.subject_user_id.as_deref() == Some(user.id.as_str()))
                .count(),
            1,
            "{} has not exactly one audit row",
            user.email
        );
    }
}

/// A [`RevokeDecision`] that admits a grant by the standing rule (as the domain's does),
/// records an audit row about its user, and counts the grants it was shown.
fn standing_decision(seen: Arc<std::sync::Mutex<Vec<RefreshGrant>>>, at: i64) -> RevokeDecision {
    Arc::new(move |grant: &RefreshGrant| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(grant.clone());
        }
        let stands = grant.user_removed_at.is_none()
            && grant.token_revoked_at.is_none()
            && grant.token_epoch == grant.user_epoch;
        stands.then(|| AuditEvent {
            actor: format!("session:{}", grant.token_id),
            org_id: Some(grant.org_id.clone()),
            subject_user_id: Some(grant.user_id.clone()),
            ..audit("tokens.revoked_all", at)
        })
    })
}

/// `count` members of `org`, `u<n>@example.com`, each with one refresh token, the n-th
/// under `hash(n + 1)`.
async fn members_with_a_token(
    store: &dyn Store,
    org: &Organization,
    count: u8,
) -> Result<Vec<User>, StoreError> {
    let mut users = Vec::new();
    for n in 0..count {
        let user = add_user(store, org, &format!("u{n}@example.com"), "member", T0).await?;
        store
            .insert_refresh_token(refresh_token(&user, n + 1, None), audit("t", T0))
            .await?;
        users.push(user);
    }
    Ok(users)
}

/// A revoke-all named by a token: the decision sees the token's grant as stored now, its
/// refusal writes nothing, its consent moves the epoch once (ending browser sessions, with
/// one audit row), and an unknown token revokes nothing without asking.
async fn revoke_all_by_token_decides_at_the_write(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let token = refresh_token(&owner, 1, None);
    store
        .insert_refresh_token(token.clone(), audit("t", T0))
        .await?;
    store
        .insert_browser_session(&hash(50), &owner.id, T0, T0 + 1_000_000)
        .await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let before = recent_events(store, 1000).await?.len();

    assert_eq!(
        store
            .revoke_all_by_token(&hash(9), standing_decision(seen.clone(), T0 + 1))
            .await?,
        None,
        "an unknown token revokes nothing"
    );
    assert!(seen.lock().map_err(|_| "poisoned")?.is_empty());

    let refuse: RevokeDecision = Arc::new(|_: &RefreshGrant| None);
    assert_eq!(store.revoke_all_by_token(&hash(1), refuse).await?, None);
    assert_eq!(
        store
            .active_user(&owner.id)
            .await?
            .ok_or("gone")?
            .token_epoch,
        0,
        "a refused revoke moved the epoch"
    );

    assert_eq!(
        store
            .revoke_all_by_token(&hash(1), standing_decision(seen.clone(), T0 + 2))
            .await?,
        Some(RevokedAll {
            user_id: owner.id.clone(),
            moved: true
        })
    );
    {
        let seen = seen.lock().map_err(|_| "poisoned")?;
        let grant = seen.first().ok_or("the decision never saw the grant")?;
        assert_eq!(
            (
                grant.token_id.as_str(),
                grant.user_id.as_str(),
                grant.org_id.as_str()
            ),
            (token.id.as_str(), owner.id.as_str(), org.id.as_str())
        );
        assert_eq!((grant.token_epoch, grant.user_epoch), (0, 0));
    }
    assert_eq!(
        store
            .active_user(&owner.id)
            .await?
            .ok_or("gone")?
            .token_epoch,
        1
    );
    assert!(
        store.browser_session_user(&hash(50), T0).await?.is_none(),
        "browser signed out"
    );
    let events = recent_events(store, 1000).await?;
    assert_eq!(events.len() - before, 1);
    let event = events.first().ok_or("no audit row")?;
    assert_eq!(event.action, "tokens.revoked_all");
    assert_eq!(event.actor, format!("session:{}", token.id));
    assert_eq!(event.subject_user_id.as_deref(), Some(owner.id.as_str()));

    // The same token again: its grant now shows the moved epoch, and the rule refuses.
    assert_eq!(
        store
            .revoke_all_by_token(&hash(1), standing_decision(seen.clone(), T0 + 3))
            .await?,
        None
    );
    let last = seen
        .lock()
        .map_err(|_| "poisoned")?
        .last()
        .cloned()
        .ok_or("not asked")?;
    assert_eq!((last.token_epoch, last.user_epoch), (0, 1));
    assert_eq!(recent_events(store, 1000).await?.len() - before, 1);
    Ok(())
}

/// Many token-named revokes at once, two per user, beside user-named ones (SQLite and
/// PostgreSQL read the group's grants in one statement): each user's epoch moves exactly once,
/// with one audit row, and each answer names its own user.
async fn revoke_all_by_token_many_at_once(db: Db) -> TestResult {
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    let users = members_with_a_token(db.store.as_ref(), &org, 20).await?;
    let named = add_user(db.store.as_ref(), &org, "named@example.com", "member", T0).await?;
    let before = recent_events(db.store.as_ref(), 1000).await?.len();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut revokes = tokio::task::JoinSet::new();
    for (n, user) in (1_u8..).zip(&users).chain((1_u8..).zip(&users)) {
        let (store, decide, user_id) = (
            db.store.clone(),
            standing_decision(seen.clone(), T0 + 1),
            user.id.clone(),
        );
        revokes.spawn(async move {
            let revoked = store.revoke_all_by_token(&hash(n), decide).await?;
            Ok::<_, StoreError>((user_id, revoked))
        });
    }
    let by_user = db.store.revoke_all_tokens(
        &named.id,
        0,
        audit_about("tokens.revoked_all", T0 + 1, &named),
    );
    assert!(by_user.await?);
    let mut moved = std::collections::HashMap::new();
    while let Some(outcome) = revokes.join_next().await {
        let (user_id, revoked) = outcome??;
        if let Some(revoked) = revoked {
            assert_eq!(revoked.user_id, user_id, "an answer named another user");
            *moved.entry(user_id).or_insert(0) += usize::from(revoked.moved);
        }
    }
    for user in &users {
        assert_eq!(moved.get(&user.id), Some(&1), "{}", user.email);
        let now = db.store.active_user(&user.id).await?.ok_or("gone")?;
        assert_eq!(now.token_epoch, 1, "{}", user.email);
    }
    let after = recent_events(db.store.as_ref(), 1000).await?;
    assert_eq!(after.len() - before, users.len() + 1);
    assert_one_audit_row_each(&after, users.iter().chain([&named]));
    Ok(())
}

/// Revoke-alls and other writes at the same moment all land: on SQLite they are written by
/// two connections, which must take turns, not fail or lose one.
async fn revokes_and_other_writes_at_once_all_land(db: Db) -> TestResult {
    const USERS: u8 = 30;
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let users = members_with_a_token(db.store.as_ref(), &org, USERS).await?;
    let before = recent_events(db.store.as_ref(), 1000).await?.len();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut revokes = tokio::task::JoinSet::new();
    let mut writes = tokio::task::JoinSet::new();
    for n in 1..=USERS {
        let (store, decide) = (db.store.clone(), standing_decision(seen.clone(), T0 + 1));
        revokes.spawn(async move { store.revoke_all_by_token(&hash(n), decide).await });
        let (store, token) = (db.store.clone(), refresh_token(&owner, 100 + n, None));
        writes.spawn(async move { store.insert_refresh_token(token, audit("t", T0 + 1)).await });
    }
    while let Some(revoked) = revokes.join_next().await {
        assert!(revoked??.ok_or("a revoke revoked nothing")?.moved);
    }
    while let Some(written) = writes.join_next().await {
        written??;
    }
    for user in &users {
        let now = db.store.active_user(&user.id).await?.ok_or("gone")?;
        assert_eq!(now.token_epoch, 1, "{}", user.email);
    }
    for n in 1..=USERS {
        let grant = db.store.find_refresh_grant(&hash(100 + n)).await?;
        assert!(
            grant.is_some_and(|grant| grant.user_id == owner.id),
            "token {n} was lost"
        );
    }
    let after = recent_events(db.store.as_ref(), 1000).await?;
    assert_eq!(after.len() - before, 2 * usize::from(USERS));
    Ok(())
}

/// Closing the store answers every revoke already queued (each committed, or failed, never
/// left waiting) and refuses later ones; an answered revoke holds.
async fn close_answers_the_revokes_already_queued(db: Db) -> TestResult {
    const USERS: u8 = 20;
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    let users = members_with_a_token(db.store.as_ref(), &org, USERS).await?;
    let closing = db.another().await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut revokes = tokio::task::JoinSet::new();
    for (n, user) in (1..=USERS).zip(&users) {
        let (store, decide, user_id) = (
            closing.clone(),
            standing_decision(seen.clone(), T0 + 1),
            user.id.clone(),
        );
        revokes.spawn(async move { (user_id, store.revoke_all_by_token(&hash(n), decide).await) });
    }
    tokio::task::yield_now().await;
    tokio::time::timeout(std::time::Duration::from_secs(30), closing.close())
        .await
        .map_err(|_| "close did not finish")?;
    while let Some(joined) =
        tokio::time::timeout(std::time::Duration::from_secs(30), revokes.join_next())
            .await
            .map_err(|_| "a queued revoke was never answered")?
    {
        match joined? {
            (user_id, Ok(revoked)) => {
                assert!(revoked.ok_or("a revoke revoked nothing")?.moved);
                let now = db.store.active_user(&user_id).await?.ok_or("gone")?;
                assert_eq!(now.token_epoch, 1, "an answered revoke did not hold");
            }
            // Sent after the queue closed: refused as an outage, which the caller may retry.
            (_, Err(err)) => assert!(err.is_unreachable(), "{err}"),
        }
    }
    let late = closing
        .revoke_all_by_token(&hash(1), standing_decision(seen, T0 + 2))
        .await;
    assert!(late.is_err(), "a revoke after close was taken: {late:?}");
    Ok(())
}

async fn remove_user_keeps_an_owner(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 1, audit("rm", T0 + 1))
            .await?,
        Removal::LastOwner
    );
    let second = add_user(store, &org, "second@example.com", "owner", T0 + 2).await?;
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 3, audit("rm", T0 + 3))
            .await?,
        Removal::Removed
    );
    assert_eq!(
        store
            .remove_user(&second.id, T0 + 4, audit("rm", T0 + 4))
            .await?,
        Removal::LastOwner
    );
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 5, audit("rm", T0 + 5))
            .await?,
        Removal::NotFound,
        "already removed"
    );
    assert_eq!(
        store
            .remove_user("nobody", T0 + 5, audit("rm", T0 + 5))
            .await?,
        Removal::NotFound
    );
    // Non-owners go regardless.
    let guest = add_user(store, &org, "guest@example.com", "guest", T0 + 6).await?;
    assert_eq!(
        store
            .remove_user(&guest.id, T0 + 7, audit("rm", T0 + 7))
            .await?,
        Removal::Removed
    );
    assert!(store.active_user(&guest.id).await?.is_none());
    Ok(())
}

async fn remove_user_races_keep_an_owner(db: Db) -> TestResult {
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    // Several rounds: two Owners, each removed by a different connection at the same moment.
    let mut keep = owner;
    for round in 0..5_i64 {
        let at = T0 + 100 * (round + 1);
        let second = add_user(
            db.store.as_ref(),
            &org,
            &format!("o{round}@example.com"),
            "owner",
            at,
        )
        .await?;
        let (a, b) = tokio::join!(
            db.store.remove_user(&keep.id, at + 1, audit("rm", at + 1)),
            other.remove_user(&second.id, at + 1, audit("rm", at + 1)),
        );
        let (a, b) = (a?, b?);
        let removed = [a, b].iter().filter(|r| **r == Removal::Removed).count();
        assert_eq!(removed, 1, "round {round}: {a:?} {b:?}");
        let owners: Vec<_> = db
            .store
            .list_users(&org.id, false)
            .await?
            .into_iter()
            .filter(|u| u.role == "owner")
            .collect();
        assert_eq!(owners.len(), 1, "round {round}");
        keep = owners.into_iter().next().ok_or("no owner")?;
    }
    other.close().await;
    Ok(())
}

// ---- authorization codes ----------------------------------------------------------------

async fn authorization_code_single_use(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store
        .insert_authorization_code(auth_code(&owner, 7))
        .await?;
    let CodeRedemption::Redeemed(code) = store
        .redeem_authorization_code(&hash(7), T0 + 1, audit("code.replayed", T0 + 1))
        .await?
    else {
        return Err("first use must redeem".into());
    };
    assert_eq!(code.user_id, owner.id);
    assert_eq!(code.redirect_uri, "http://127.0.0.1/cb");
    assert_eq!(code.code_challenge, "challenge");
    assert_eq!(code.nonce.as_deref(), Some("n"));
    assert_eq!(code.expires_at, T0 + 60_000);
    assert!(
        store
            .insert_refresh_token(refresh_token(&owner, 8, Some(hash(7))), audit("t", T0 + 2))
            .await?
    );
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 3, audit("code.replayed", T0 + 3))
            .await?,
        CodeRedemption::Replayed
    ));
    let grant = store
        .find_refresh_grant(&hash(8))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        grant.token_revoked_at,
        Some(T0 + 3),
        "the replay revoked the issued token"
    );
    // The first replay is audited about the code's user, in its organization.
    let replays = |events: Vec<prismd::store::AuditRecord>| -> Vec<prismd::store::AuditRecord> {
        events
            .into_iter()
            .filter(|e| e.action == "code.replayed")
            .collect()
    };
    let audited = replays(recent_events(store, 100).await?);
    assert_eq!(audited.len(), 1);
    assert_eq!(
        audited[0].subject_user_id.as_deref(),
        Some(owner.id.as_str())
    );
    assert_eq!(audited[0].org_id.as_deref(), Some(owner.org_id.as_str()));
    assert_eq!(audited[0].address.as_deref(), Some("127.0.0.1"));
    let detail: serde_json::Value =
        serde_json::from_str(audited[0].detail.as_deref().ok_or("no detail")?)?;
    assert_eq!(detail["revoked"], true);
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 4, audit("code.replayed", T0 + 4))
            .await?,
        CodeRedemption::Replayed
    ));
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(99), T0, audit("code.replayed", T0))
            .await?,
        CodeRedemption::Unknown
    ));
    // Later replays and unknown codes add no rows.
    assert_eq!(replays(recent_events(store, 100).await?).len(), 1);
    Ok(())
}

async fn authorization_code_replay_before_token(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store
        .insert_authorization_code(auth_code(&owner, 7))
        .await?;
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 1, audit("code.replayed", T0 + 1))
            .await?,
        CodeRedemption::Redeemed(_)
    ));
    // The replay comes before the first exchange has stored its token.
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 2, audit("code.replayed", T0 + 2))
            .await?,
        CodeRedemption::Replayed
    ));
    assert!(
        store
            .insert_refresh_token(refresh_token(&owner, 8, Some(hash(7))), audit("t", T0 + 3))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(8))
        .await?
        .ok_or("no grant")?;
    assert!(grant.token_revoked_at.is_some(), "born revoked");
    Ok(())
}

async fn authorization_code_redeem_races(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    for seed in 1..=5 {
        db.store
            .insert_authorization_code(auth_code(&owner, seed))
            .await?;
        let code = hash(seed);
        let (a, b) = tokio::join!(
            db.store
                .redeem_authorization_code(&code, T0 + 1, audit("code.replayed", T0 + 1)),
            other.redeem_authorization_code(&code, T0 + 1, audit("code.replayed", T0 + 1)),
        );
        let redeemed = [a?, b?]
            .iter()
            .filter(|r| matches!(r, CodeRedemption::Redeemed(_)))
            .count();
        assert_eq!(redeemed, 1, "code {seed} redeemed exactly once");
    }
    other.close().await;
    Ok(())
}

// ---- browser sessions and invitations --------------------------------------------------

async fn browser_sessions(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    store
        .insert_browser_session(&hash(1), &owner.id, T0, T0 + 1000)
        .await?;
    assert_eq!(
        store.browser_session_user(&hash(1), T0 + 1).await?,
        Some(owner.clone())
    );
    assert_eq!(
        store.browser_session_user(&hash(1), T0 + 1000).await?,
        None,
        "expired"
    );
    store.delete_browser_session(&hash(1)).await?;
    assert_eq!(store.browser_session_user(&hash(1), T0 + 1).await?, None);
    // A new password ends every browser session of that user, and only theirs.
    let guest = add_user(store, &org, "g@example.com", "guest", T0).await?;
    store
        .insert_browser_session(&hash(2), &owner.id, T0, T0 + 1000)
        .await?;
    store
        .insert_browser_session(&hash(3), &owner.id, T0, T0 + 1000)
        .await?;
    store
        .insert_browser_session(&hash(4), &guest.id, T0, T0 + 1000)
        .await?;
    assert!(
        store
            .set_password_hash(&owner.id, "h", audit("pw", T0 + 1))
            .await?
    );
    assert_eq!(store.browser_session_user(&hash(2), T0 + 1).await?, None);
    assert_eq!(store.browser_session_user(&hash(3), T0 + 1).await?, None);
    assert_eq!(
        store.browser_session_user(&hash(4), T0 + 1).await?,
        Some(guest.clone())
    );
    // So does a revoke-all; and removal hides the user.
    assert!(
        store
            .revoke_all_tokens(&guest.id, 0, audit("ra", T0 + 2))
            .await?
    );
    assert_eq!(store.browser_session_user(&hash(4), T0 + 3).await?, None);
    store
        .insert_browser_session(&hash(5), &guest.id, T0, T0 + 1000)
        .await?;
    store
        .remove_user(&guest.id, T0 + 4, audit("rm", T0 + 4))
        .await?;
    assert_eq!(store.browser_session_user(&hash(5), T0 + 5).await?, None);
    Ok(())
}

async fn invitations_single_use(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let invited = add_user(store, &org, "new@example.com", "guest", T0).await?;
    store
        .insert_invitation(&hash(1), &invited.id, T0 + 1000, audit("invite", T0))
        .await?;
    // A second link replaces the first.
    store
        .insert_invitation(&hash(2), &invited.id, T0 + 1000, audit("invite", T0 + 1))
        .await?;
    assert_eq!(store.invitation_user(&hash(1), T0 + 2).await?, None);
    assert_eq!(
        store.invitation_user(&hash(2), T0 + 2).await?,
        Some(invited.clone())
    );
    assert_eq!(
        store.invitation_user(&hash(2), T0 + 1000).await?,
        None,
        "expired"
    );
    assert!(
        !store
            .accept_invitation(&hash(1), "h1", audit("accept", T0 + 3))
            .await?
    );
    store
        .insert_browser_session(&hash(9), &invited.id, T0, T0 + 10_000)
        .await?;
    assert!(
        store
            .accept_invitation(&hash(2), "h2", audit("accept", T0 + 3))
            .await?
    );
    assert!(store.has_password(&invited.id).await?);
    assert_eq!(store.browser_session_user(&hash(9), T0 + 4).await?, None);
    assert!(
        !store
            .accept_invitation(&hash(2), "h3", audit("accept", T0 + 4))
            .await?,
        "single use"
    );
    assert_eq!(store.invitation_user(&hash(2), T0 + 4).await?, None);

    // An invitation never resets an existing password.
    assert!(
        store
            .set_password_hash(&owner.id, "owner-hash", audit("pw", T0))
            .await?
    );
    store
        .insert_invitation(&hash(3), &owner.id, T0 + 1000, audit("invite", T0))
        .await?;
    assert_eq!(store.invitation_user(&hash(3), T0 + 1).await?, None);
    assert!(
        !store
            .accept_invitation(&hash(3), "attacker", audit("accept", T0 + 2))
            .await?
    );
    let credentials = store.credentials_by_email("owner@example.com").await?;
    assert_eq!(credentials[0].password_hash.as_deref(), Some("owner-hash"));

    // Expired links cannot be accepted.
    let late = add_user(store, &org, "late@example.com", "guest", T0).await?;
    store
        .insert_invitation(&hash(4), &late.id, T0 + 10, audit("invite", T0))
        .await?;
    assert!(
        !store
            .accept_invitation(&hash(4), "h", audit("accept", T0 + 10))
            .await?
    );
    assert!(!store.has_password(&late.id).await?);
    Ok(())
}

// ---- device codes -------------------------------------------------------------------------

async fn device_codes(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store.insert_device_code(device_code(1)).await?;
    let mut clash = device_code(2);
    clash.user_code_hash = device_code(1).user_code_hash;
    assert!(matches!(
        store.insert_device_code(clash).await,
        Err(StoreError::Conflict(_))
    ));
    let first = store
        .poll_device_code(&hash(1), T0 + 5)
        .await?
        .ok_or("no code")?;
    assert_eq!(first.status, "pending");
    assert_eq!(first.last_polled_at, None);
    assert_eq!(first.interval_secs, 5);
    let second = store
        .poll_device_code(&hash(1), T0 + 6)
        .await?
        .ok_or("no code")?;
    assert_eq!(
        second.last_polled_at,
        Some(T0 + 5),
        "the state before this poll"
    );
    store.slow_down_device_code(&hash(1), 10).await?;
    assert_eq!(
        store
            .poll_device_code(&hash(1), T0 + 7)
            .await?
            .ok_or("no code")?
            .interval_secs,
        10
    );
    assert!(store.poll_device_code(&hash(77), T0).await?.is_none());

    let user_code = device_code(1).user_code_hash;
    assert!(
        !store.redeem_device_code(&hash(1)).await?,
        "not approved yet"
    );
    assert!(
        store
            .decide_device_code(&user_code, Some(&owner.id), T0 + 8)
            .await?
    );
    assert!(
        !store.decide_device_code(&user_code, None, T0 + 9).await?,
        "decided once"
    );
    let approved = store
        .poll_device_code(&hash(1), T0 + 10)
        .await?
        .ok_or("no code")?;
    assert_eq!(approved.status, "approved");
    assert_eq!(approved.user_id.as_deref(), Some(owner.id.as_str()));
    assert!(store.redeem_device_code(&hash(1)).await?);
    assert!(!store.redeem_device_code(&hash(1)).await?, "redeemed once");

    // Denied codes stay denied; expired codes cannot be decided.
    store.insert_device_code(device_code(3)).await?;
    assert!(
        store
            .decide_device_code(&device_code(3).user_code_hash, None, T0 + 1)
            .await?
    );
    assert_eq!(
        store
            .poll_device_code(&hash(3), T0 + 2)
            .await?
            .ok_or("no code")?
            .status,
        "denied"
    );
    assert!(!store.redeem_device_code(&hash(3)).await?);
    store.insert_device_code(device_code(4)).await?;
    assert!(
        !store
            .decide_device_code(
                &device_code(4).user_code_hash,
                Some(&owner.id),
                T0 + 600_000
            )
            .await?
    );
    Ok(())
}

async fn device_code_redeem_races(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    for seed in 1..=5 {
        db.store.insert_device_code(device_code(seed)).await?;
        let user_code = device_code(seed).user_code_hash;
        let (a, b) = tokio::join!(
            db.store
                .decide_device_code(&user_code, Some(&owner.id), T0 + 1),
            other.decide_device_code(&user_code, None, T0 + 1),
        );
        assert_eq!(u8::from(a?) + u8::from(b?), 1, "decided exactly once");
        let device = hash(seed);
        let (a, b) = tokio::join!(
            db.store.redeem_device_code(&device),
            other.redeem_device_code(&device),
        );
        let redeemed = u8::from(a?) + u8::from(b?);
        let status = db
            .store
            .poll_device_code(&hash(seed), T0 + 2)
            .await?
            .ok_or("no code")?
            .status;
        match status.as_str() {
            "redeemed" => assert_eq!(redeemed, 1, "redeemed exactly once"),
            "denied" => assert_eq!(redeemed, 0),
            other => return Err(format!("unexpected status {other}").into()),
        }
    }
    other.close().await;
    Ok(())
}

// ---- signing keys, audit, token uses ----------------------------------------------------

async fn signing_key_created_once(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert!(store.signing_keys().await?.is_empty());
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .insert_signing_key_if_none_active(signing_key("k2", T0 + 1))
        .await?;
    let keys = store.signing_keys().await?;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid, "k1");
    assert_eq!(
        keys[0].private_key,
        vec![1, 2, 3, 0, 255],
        "bytes round-trip"
    );
    assert_eq!(keys[0].public_key, vec![4, 5, 6]);
    assert_eq!(keys[0].algorithm, "EdDSA");
    assert_eq!(keys[0].retired_at, None);
    Ok(())
}

async fn signing_key_races(db: Db) -> TestResult {
    // Two replicas (two pools) and several tasks in each race to create the first key. The
    // pools are warmed up and the tasks released together by a barrier, so the inserts
    // really overlap instead of queueing behind connection set-up; several rounds, because
    // one round of a race without the lock still comes out right now and then.
    let other = db.another().await?;
    db.store.ping().await?;
    other.ping().await?;
    for round in 0..5 {
        db.execute_raw("DELETE FROM signing_keys").await?;
        let tasks_count = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks_count));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..tasks_count {
            let store = if n % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            let barrier = barrier.clone();
            let at = T0 + i64::try_from(n)?;
            tasks.spawn(async move {
                barrier.wait().await;
                store
                    .insert_signing_key_if_none_active(signing_key(&format!("k{n}"), at))
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let keys = db.store.signing_keys().await?;
        assert_eq!(
            keys.len(),
            1,
            "round {round}: exactly one key: {:?}",
            keys.iter().map(|k| &k.kid).collect::<Vec<_>>()
        );
    }
    other.close().await;
    Ok(())
}

async fn signing_key_rotation(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    let retired = store
        .rotate_signing_key(signing_key("k2", T0 + 10), audit("keys.rotated", T0 + 10))
        .await?;
    assert_eq!(retired, vec!["k1".to_owned()]);
    let keys = store.signing_keys().await?;
    let summary: Vec<_> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.retired_at))
        .collect();
    assert_eq!(
        summary,
        vec![("k2", None), ("k1", Some(T0 + 10))],
        "newest first"
    );
    // The first-key insert never adds a second active key after a rotation.
    store
        .insert_signing_key_if_none_active(signing_key("k3", T0 + 20))
        .await?;
    assert_eq!(store.signing_keys().await?.len(), 2);
    let events = recent_events(store, 1).await?;
    assert_eq!(events[0].action, "keys.rotated");
    // Another rotation retires the key the first one made.
    let again = store
        .rotate_signing_key(signing_key("k4", T0 + 30), audit("keys.rotated", T0 + 30))
        .await?;
    assert_eq!(again, vec!["k2".to_owned()]);
    let active: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.kid)
        .collect();
    assert_eq!(active, vec!["k4".to_owned()]);
    Ok(())
}

async fn signing_key_rotation_races(db: Db) -> TestResult {
    // Rotations on two replicas and a first-key insert, released together: whatever the
    // order, exactly one key is active afterwards.
    let other = db.another().await?;
    db.store.ping().await?;
    other.ping().await?;
    let tasks_count = 6;
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks_count));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..tasks_count {
        let store = if n % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let barrier = barrier.clone();
        let at = T0 + i64::try_from(n)?;
        tasks.spawn(async move {
            barrier.wait().await;
            let key = signing_key(&format!("k{n}"), at);
            if n == 0 {
                store.insert_signing_key_if_none_active(key).await
            } else {
                store
                    .rotate_signing_key(key, audit("keys.rotated", at))
                    .await
                    .map(drop)
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    other.close().await;
    let keys = db.store.signing_keys().await?;
    let active = keys.iter().filter(|k| k.retired_at.is_none()).count();
    let kids: Vec<_> = keys.iter().map(|k| (&k.kid, k.retired_at)).collect();
    assert_eq!(active, 1, "{kids:?}");
    Ok(())
}

async fn signing_key_rotation_if_stale(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    // The active key was created at the bound: not stale, nothing written.
    let young = store
        .rotate_signing_key_if_stale(
            signing_key("k2", T0 + 100),
            audit("keys.rotated", T0 + 100),
            T0,
        )
        .await?;
    assert_eq!(young, None);
    assert_eq!(store.signing_keys().await?.len(), 1);
    assert!(recent_events(store, 10).await?.is_empty(), "no audit row");
    let rotated = store
        .rotate_signing_key_if_stale(
            signing_key("k2", T0 + 100),
            audit("keys.rotated", T0 + 100),
            T0 + 1,
        )
        .await?;
    assert_eq!(rotated, Some(vec!["k1".to_owned()]));
    let summary: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| (k.kid, k.retired_at))
        .collect();
    assert_eq!(
        summary,
        vec![("k2".to_owned(), None), ("k1".to_owned(), Some(T0 + 100))]
    );
    assert_eq!(recent_events(store, 10).await?.len(), 1);
    // The same decision made again (by a replica that read the old key) changes nothing.
    let again = store
        .rotate_signing_key_if_stale(
            signing_key("k3", T0 + 101),
            audit("keys.rotated", T0 + 101),
            T0 + 1,
        )
        .await?;
    assert_eq!(again, None);
    assert_eq!(store.signing_keys().await?.len(), 2);
    assert_eq!(recent_events(store, 10).await?.len(), 1);
    Ok(())
}

async fn signing_key_stale_rotation_races(db: Db) -> TestResult {
    // Replicas (two pools, several tasks each) that all found the active key old rotate at
    // the same moment: one new key per round, however they interleave.
    let other = db.another().await?;
    db.store.ping().await?;
    other.ping().await?;
    db.store
        .insert_signing_key_if_none_active(signing_key("k0", T0))
        .await?;
    for round in 1..=5_i64 {
        let tasks_count = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks_count));
        let mut tasks = tokio::task::JoinSet::new();
        // Everything created before this round's start is stale.
        let stale_before = T0 + round * 1_000;
        for n in 0..tasks_count {
            let store = if n % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            let barrier = barrier.clone();
            let at = stale_before + i64::try_from(n)?;
            tasks.spawn(async move {
                barrier.wait().await;
                store
                    .rotate_signing_key_if_stale(
                        signing_key(&format!("r{round}-{n}"), at),
                        audit("keys.rotated", at),
                        stale_before,
                    )
                    .await
            });
        }
        let mut rotations = 0;
        while let Some(done) = tasks.join_next().await {
            rotations += usize::from(done??.is_some());
        }
        let keys = db.store.signing_keys().await?;
        let active = keys.iter().filter(|k| k.retired_at.is_none()).count();
        assert_eq!(rotations, 1, "round {round}");
        assert_eq!(active, 1, "round {round}");
        assert_eq!(keys.len(), usize::try_from(round + 1)?, "round {round}");
    }
    other.close().await;
    Ok(())
}

async fn private_key_replacement(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .rotate_signing_key(signing_key("k2", T0 + 10), audit("keys.rotated", T0 + 10))
        .await?;
    let events_before = recent_events(store, 10).await?.len();
    let replaced = store
        .replace_private_keys(
            &[
                PrivateKeyReplacement {
                    kid: "k1".into(),
                    previous: vec![9, 9, 9],
                    sealed: vec![7; 40],
                },
                PrivateKeyReplacement {
                    kid: "k2".into(),
                    previous: vec![1, 2, 3, 0, 255],
                    sealed: vec![8; 40],
                },
                PrivateKeyReplacement {
                    kid: "gone".into(),
                    previous: vec![1, 2, 3, 0, 255],
                    sealed: vec![6; 40],
                },
            ],
            audit("keys.sealed", T0 + 20),
        )
        .await?;
    assert_eq!(
        replaced,
        vec!["k2".to_owned()],
        "only rows that still hold `previous`"
    );
    let stored: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| (k.kid, k.private_key))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("k2".to_owned(), vec![8; 40]),
            ("k1".to_owned(), vec![1, 2, 3, 0, 255])
        ]
    );
    let events = recent_events(store, 10).await?;
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(events[0].action, "keys.sealed");
    // Nothing to replace: nothing written, not even the audit row.
    let none = store
        .replace_private_keys(
            &[PrivateKeyReplacement {
                kid: "k2".into(),
                previous: vec![1, 2, 3, 0, 255],
                sealed: vec![5; 40],
            }],
            audit("keys.sealed", T0 + 30),
        )
        .await?;
    assert!(none.is_empty());
    assert_eq!(recent_events(store, 10).await?.len(), events_before + 1);
    Ok(())
}

async fn audit_rows(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert!(recent_events(store, 10).await?.is_empty());
    let (org, owner) = org_with_owner(store).await?;
    let event = AuditEvent {
        org_id: Some(org.id.clone()),
        subject_user_id: Some(owner.id.clone()),
        ..audit("user.revoke_all", T0 + 5)
    };
    assert!(store.revoke_all_tokens(&owner.id, 0, event).await?);
    // A refused change writes no row.
    assert!(
        !store
            .revoke_all_tokens(&owner.id, 0, audit("refused", T0 + 6))
            .await?
    );
    add_user(store, &org, "x@example.com", "guest", T0 + 7).await?;
    let events = recent_events(store, 10).await?;
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["user.add", "user.revoke_all", "bootstrap"],
        "newest first"
    );
    assert!(events.windows(2).all(|w| w[0].id > w[1].id));
    let revoke = &events[1];
    assert_eq!(revoke.at, T0 + 5);
    assert_eq!(revoke.actor, "test");
    assert_eq!(revoke.org_id.as_deref(), Some(org.id.as_str()));
    assert_eq!(revoke.subject_user_id.as_deref(), Some(owner.id.as_str()));
    assert_eq!(revoke.address.as_deref(), Some("127.0.0.1"));
    assert_eq!(revoke.detail.as_deref(), Some(r#"{"k":1}"#));
    assert_eq!(recent_events(store, 1).await?.len(), 1);
    Ok(())
}

async fn token_uses_and_ping(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store.ping().await?;
    let (_, owner) = org_with_owner(store).await?;
    let token = refresh_token(&owner, 1, None);
    store
        .insert_refresh_token(token.clone(), audit("t", T0))
        .await?;
    store.record_token_uses(&[]).await?;
    let uses = [
        TokenUse {
            token_id: token.id.clone(),
            at: T0 + 5,
            address: Some("10.0.0.1".into()),
        },
        TokenUse {
            token_id: token.id.clone(),
            at: T0 + 3,
            address: None,
        },
        TokenUse {
            token_id: "unknown".into(),
            at: T0 + 5,
            address: None,
        },
    ];
    store.record_token_uses(&uses).await?;
    assert!(store.find_refresh_grant(&hash(1)).await?.is_some());
    // The latest use in a batch wins, whatever its place; an older one never overwrites it.
    let session = store.live_session(&token.id).await?.ok_or("no session")?;
    assert_eq!(session.last_used_at, Some(T0 + 5));
    assert_eq!(session.last_used_addr.as_deref(), Some("10.0.0.1"));
    let reversed: Vec<TokenUse> = uses.iter().rev().cloned().collect();
    store.record_token_uses(&reversed).await?;
    store
        .record_token_uses(&[TokenUse {
            token_id: token.id.clone(),
            at: T0 + 4,
            address: Some("10.0.0.2".into()),
        }])
        .await?;
    let session = store.live_session(&token.id).await?.ok_or("no session")?;
    assert_eq!(session.last_used_at, Some(T0 + 5));
    assert_eq!(session.last_used_addr.as_deref(), Some("10.0.0.1"));
    Ok(())
}

/// Sessions are the live refresh tokens of one user (the standing rule in SQL), newest first,
/// bounded, with last use as recorded; one session is found by id whoever's it is.
async fn sessions_live_only_newest_first(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let member = add_user(store, &org, "m@example.com", "guest", T0).await?;
    let older = refresh_token(&owner, 1, None);
    let newer = NewRefreshToken {
        name: None,
        client_id: "other".into(),
        created_at: T0 + 30,
        ..refresh_token(&owner, 2, None)
    };
    let revoked = NewRefreshToken {
        created_at: T0 + 20,
        ..refresh_token(&owner, 3, None)
    };
    let members = refresh_token(&member, 4, None);
    for token in [&older, &newer, &revoked, &members] {
        assert!(
            store
                .insert_refresh_token(token.clone(), audit("t", T0))
                .await?
        );
    }
    assert!(
        store
            .revoke_session(&revoked.id, &owner.id, audit("rv", T0 + 40))
            .await?
    );
    store
        .record_token_uses(&[TokenUse {
            token_id: older.id.clone(),
            at: T0 + 50,
            address: Some("10.0.0.9".into()),
        }])
        .await?;

    let sessions = store.list_sessions(&owner.id, 100).await?;
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [newer.id.as_str(), older.id.as_str()]);
    assert_eq!(
        sessions[1],
        SessionRecord {
            id: older.id.clone(),
            user_id: owner.id.clone(),
            client_id: "client".into(),
            name: Some("ci".into()),
            created_at: T0 + 10,
            last_used_at: Some(T0 + 50),
            last_used_addr: Some("10.0.0.9".into()),
        }
    );
    assert_eq!(sessions[0].name, None);
    assert_eq!(sessions[0].client_id, "other");
    assert_eq!(sessions[0].last_used_at, None);
    // Bounded: the limit holds, and a silly one is clamped rather than an error.
    assert_eq!(store.list_sessions(&owner.id, 1).await?.len(), 1);
    assert!(store.list_sessions(&owner.id, -5).await?.is_empty());
    assert_eq!(store.list_sessions(&owner.id, i64::MAX).await?.len(), 2);
    assert!(store.list_sessions("nobody", 100).await?.is_empty());

    // One by id: anyone's, live only.
    assert_eq!(
        store.live_session(&older.id).await?.as_ref(),
        Some(&sessions[1])
    );
    let theirs = store.live_session(&members.id).await?.ok_or("no session")?;
    assert_eq!(theirs.user_id, member.id);
    assert!(store.live_session(&revoked.id).await?.is_none());
    assert!(store.live_session("not-a-uuid").await?.is_none());
    assert!(store.live_session("").await?.is_none());

    // Revoke-all ends every session (the epoch moved); a token minted afterwards is live.
    assert!(
        store
            .revoke_all_tokens(
                &owner.id,
                0,
                audit_about("tokens.revoked_all", T0 + 60, &owner)
            )
            .await?
    );
    assert!(store.list_sessions(&owner.id, 100).await?.is_empty());
    assert!(store.live_session(&older.id).await?.is_none());
    let fresh = refresh_token(&owner, 5, None);
    assert!(
        store
            .insert_refresh_token(fresh.clone(), audit("t", T0 + 70))
            .await?
    );
    let ids: Vec<String> = store
        .list_sessions(&owner.id, 100)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [fresh.id]);

    // A removed user has no sessions.
    assert_eq!(store.list_sessions(&member.id, 100).await?.len(), 1);
    assert_eq!(
        store
            .remove_user(
                &member.id,
                T0 + 80,
                audit_about("user.removed", T0 + 80, &member)
            )
            .await?,
        Removal::Removed
    );
    assert!(store.list_sessions(&member.id, 100).await?.is_empty());
    assert!(store.live_session(&members.id).await?.is_none());
    Ok(())
}

/// Changes committed through one store reach a follower on another store of the same
/// database; writes that roll back are not announced.
async fn changes_reach_other_processes(db: Db) -> TestResult {
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let user = add_user(db.store.as_ref(), &org, "u@example.com", "member", T0).await?;
    let (sender, mut heard) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let follower_store = db.store.clone();
    let follower = tokio::spawn(async move {
        let forward = move |change: Change| {
            let _ = sender.send(change);
        };
        follower_store.follow_changes(&forward).await
    });
    // The feed is live once it has heard something; poke it until then.
    let other = db.another().await?;
    let wait = std::time::Duration::from_secs(10);
    let first = tokio::time::timeout(wait, async {
        loop {
            other
                .update_profile(
                    &owner.id,
                    ProfileChanges {
                        name: Some("poke".into()),
                        ..ProfileChanges::default()
                    },
                    audit_about("user.updated", T0 + 1, &owner),
                )
                .await?;
            tokio::select! {
                change = heard.recv() => match change {
                    Some(change) if change.action == "user.updated" => {
                        return Ok::<_, Box<dyn std::error::Error>>(change)
                    }
                    Some(_) => {}
                    None => return Err("the change feed ended".into()),
                },
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    })
    .await??;
    assert_eq!(first.user_id.as_deref(), Some(owner.id.as_str()));
    while heard.try_recv().is_ok() {}

    // Nothing changed (the epoch is not 7): nothing announced. Its own action name would show
    // if it were.
    assert!(
        !other
            .revoke_all_tokens(&user.id, 7, audit_about("must.not.be.heard", T0 + 2, &user))
            .await?
    );
    assert!(
        other
            .revoke_all_tokens(
                &user.id,
                0,
                audit_about("tokens.revoked_all", T0 + 3, &user)
            )
            .await?
    );
    let change = tokio::time::timeout(wait, async {
        loop {
            match heard.recv().await {
                Some(change) if change.action == "user.updated" => continue,
                other => return other,
            }
        }
    })
    .await?
    .ok_or("the change feed ended")?;
    assert_eq!(
        change,
        Change {
            action: "tokens.revoked_all".into(),
            user_id: Some(user.id.clone()),
        }
    );
    // A quiet feed stays up: PostgreSQL's listener hears its own heartbeats (it gives up
    // after 3 s of silence), SQLite's poll just keeps polling.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        !follower.is_finished(),
        "the feed ended while nothing changed"
    );
    assert!(
        heard.try_recv().is_err(),
        "heartbeats are not handed on as changes"
    );
    follower.abort();
    other.close().await;
    Ok(())
}

/// The hot-path cache answers repeated reads from memory, and forgets an entry when this
/// process changes its user or when a change from elsewhere is applied.
async fn cache_forgets_what_changes_invalidate(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let cached = feedless_cache(&db, 1000).await?;
    // Bypassed until its change feed listens ...
    cached
        .insert_refresh_token(refresh_token(&owner, 3, None), audit("t", T0))
        .await?;
    cached.find_refresh_grant(&hash(3)).await?;
    cached.find_refresh_grant(&hash(3)).await?;
    // (A write still drops what its audit row names, as the feed would: counted, but
    // nothing was answered from memory or kept there.)
    let bypassed = cached.stats();
    assert_eq!((bypassed.hits, bypassed.misses), (0, 0));
    // ... which this test stands in for.
    cached.apply(&Change::listening());
    let token = refresh_token(&owner, 1, None);
    let session = token.id.clone();
    cached.insert_refresh_token(token, audit("t", T0)).await?;
    // Unknown hashes are never cached: a token minted elsewhere works at once.
    assert!(cached.find_refresh_grant(&hash(9)).await?.is_none());
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.user_epoch, 0);
    // A grant is cached on its token's second read, not its first.
    cached.find_refresh_grant(&hash(1)).await?;
    assert_eq!((cached.stats().hits, cached.stats().misses), (0, 3));
    cached.find_refresh_grant(&hash(1)).await?;
    cached.principal(&owner.id, &session).await?;
    cached.principal(&owner.id, &session).await?;
    assert_eq!((cached.stats().hits, cached.stats().misses), (2, 4));

    // This process revokes: gone at once.
    assert!(
        cached
            .revoke_all_tokens(&owner.id, 0, audit("tokens.revoked_all", T0 + 1))
            .await?
    );
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.user_epoch, 1);

    // Another process revokes: the cache holds the old state until the change is applied
    // (the positive control that the cache is in the way at all) ...
    cached.principal(&owner.id, &session).await?;
    let other = db.another().await?;
    assert!(
        other
            .revoke_session(&session, &owner.id, audit("token.revoked", T0 + 2))
            .await?
    );
    let stale = cached.principal(&owner.id, &session).await?.ok_or("none")?;
    assert_eq!(stale.session_revoked_at, Some(None));
    // ... and forgets it when it is.
    cached.apply(&Change {
        action: "token.revoked".into(),
        user_id: Some(owner.id.clone()),
    });
    let fresh = cached.principal(&owner.id, &session).await?.ok_or("none")?;
    assert_eq!(fresh.session_revoked_at, Some(Some(T0 + 2)));

    // "Everything changed" drops every entry.
    other
        .update_profile(
            &owner.id,
            ProfileChanges {
                name: Some("Renamed".into()),
                ..ProfileChanges::default()
            },
            audit("user.updated", T0 + 3),
        )
        .await?;
    assert_ne!(
        cached
            .principal(&owner.id, &session)
            .await?
            .ok_or("none")?
            .user
            .name,
        "Renamed"
    );
    // Sign-in events and limit trips change nobody's standing: they drop nothing, not
    // even when they concern no user (which would otherwise mean "everything").
    let invalidations = cached.stats().invalidations;
    for action in ["login.failed", "login.succeeded", "limit.tripped"] {
        cached.apply(&Change {
            action: action.into(),
            user_id: None,
        });
        cached.apply(&Change {
            action: action.into(),
            user_id: Some(owner.id.clone()),
        });
    }
    assert_eq!(cached.stats().invalidations, invalidations);
    assert_ne!(
        cached
            .principal(&owner.id, &session)
            .await?
            .ok_or("none")?
            .user
            .name,
        "Renamed"
    );
    cached.apply(&Change::everything());
    assert_eq!(
        cached
            .principal(&owner.id, &session)
            .await?
            .ok_or("none")?
            .user
            .name,
        "Renamed"
    );

    // A broken feed means the cache cannot hear of revokes: it is bypassed until the feed
    // listens again.
    let hits = cached.stats().hits;
    cached.feed_lost();
    cached.principal(&owner.id, &session).await?;
    cached.principal(&owner.id, &session).await?;
    assert_eq!(cached.stats().hits, hits);
    other.close().await;
    Ok(())
}

/// A burst of invalidations younger than the lifetime (a wave of revokes) keeps the cache's
/// memory of them within its capacity, and forgetting them never brings back an entry an
/// invalidation had made stale.
async fn cache_invalidation_marks_stay_bounded(db: Db) -> TestResult {
    const CAPACITY: usize = 8;
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let cached = live_cache(&db, CAPACITY).await?;
    cached
        .insert_refresh_token(refresh_token(&owner, 1, None), audit("t", T0))
        .await?;
    for _ in 0..3 {
        cached.find_refresh_grant(&hash(1)).await?;
    }
    assert_eq!(cached.stats().hits, 1, "the grant is cached");

    // Another process revokes the owner; the cache holds the old state until it hears.
    let other = db.another().await?;
    assert!(
        other
            .revoke_all_tokens(&owner.id, 0, audit("tokens.revoked_all", T0 + 1))
            .await?
    );
    let stale = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        stale.user_epoch, 0,
        "the cache is in the way (positive control)"
    );
    let revoked = |user_id: &str| Change {
        action: "tokens.revoked_all".into(),
        user_id: Some(user_id.to_owned()),
    };
    cached.apply(&revoked(&owner.id));
    // A wave of other users' revokes, all within the lifetime, several times the capacity.
    for n in 0..(CAPACITY * 5) {
        cached.apply(&revoked(&format!("someone-{n}")));
        assert!(
            cached.stats().invalidation_marks <= CAPACITY,
            "{} marks kept with a capacity of {CAPACITY}",
            cached.stats().invalidation_marks
        );
    }
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        grant.user_epoch, 1,
        "a forgotten mark brought back a stale entry"
    );
    other.close().await;
    Ok(())
}

/// A cache in front of `db`'s store with a lifetime far beyond any test, bypassed until told
/// that its change feed listens. No change feed runs behind it in these tests (nothing calls
/// [`Store::follow_changes`] for it): an entry is dropped only by a write made through it or
/// by what the test itself hands to `StandingCache::apply`, never by a poll or a notification
/// racing the test. So a stale read here is the cache's own fault, on either backend, every
/// time.
async fn feedless_cache(db: &Db, capacity: usize) -> Result<Cached, StoreError> {
    let options = OpenOptions {
        cache: CacheSettings {
            ttl: std::time::Duration::from_secs(600),
            capacity,
        },
        ..OpenOptions::default()
    };
    Ok(Cached(store::open(&db.backend, options).await?))
}

/// A [`feedless_cache`] in use, as once its change feed listens.
async fn live_cache(db: &Db, capacity: usize) -> Result<Cached, StoreError> {
    let cached = feedless_cache(db, capacity).await?;
    cached.apply(&Change::listening());
    Ok(cached)
}

/// A store whose standing cache is on (a second store on the test's database, so writes
/// through `db.store` go past its cache), with its cache's handles at hand.
struct Cached(Arc<dyn Store>);

impl std::ops::Deref for Cached {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        self.0.as_ref()
    }
}

impl Cached {
    fn stats(&self) -> CacheStats {
        self.0
            .cache()
            .map(|cache| cache.stats())
            .unwrap_or_default()
    }

    fn apply(&self, change: &Change) {
        if let Some(cache) = self.0.cache() {
            cache.apply(change);
        }
    }

    fn feed_lost(&self) {
        if let Some(cache) = self.0.cache() {
            cache.feed_lost();
        }
    }
}

/// The seed of the token hash of the session [`warm_cache`] caches.
const WARM_TOKEN: u8 = 1;

/// A member's session whose grant and principal a [`live_cache`] answers from memory.
struct WarmCache {
    cached: Cached,
    member: User,
    session: String,
}

/// Sets up a [`WarmCache`]. The user and the token are written past the cache, so only the
/// reads go through it.
async fn warm_cache(db: &Db) -> Result<WarmCache, Box<dyn std::error::Error>> {
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    // A member rather than the Owner: the last Owner cannot be removed.
    let member = add_user(db.store.as_ref(), &org, "m@example.com", "member", T0).await?;
    let token = refresh_token(&member, WARM_TOKEN, None);
    let session = token.id.clone();
    assert!(db.store.insert_refresh_token(token, audit("t", T0)).await?);
    let cached = live_cache(db, 1000).await?;
    // A grant is cached on its token's second read, a principal on its first.
    cached.find_refresh_grant(&hash(WARM_TOKEN)).await?;
    cached.find_refresh_grant(&hash(WARM_TOKEN)).await?;
    cached.principal(&member.id, &session).await?;
    let warm = WarmCache {
        cached,
        member,
        session,
    };
    let (_, _, hits) = warm.read().await?;
    assert_eq!(hits, 2, "both come from memory (the cache is in the way)");
    Ok(warm)
}

impl WarmCache {
    /// The grant and the principal, read through the cache, and how many of the two it
    /// answered from memory.
    async fn read(
        &self,
    ) -> Result<(RefreshGrant, PrincipalRecord, u64), Box<dyn std::error::Error>> {
        let hits = self.cached.stats().hits;
        let grant = self
            .cached
            .find_refresh_grant(&hash(WARM_TOKEN))
            .await?
            .ok_or("no grant")?;
        let principal = self
            .cached
            .principal(&self.member.id, &self.session)
            .await?
            .ok_or("no principal")?;
        Ok((grant, principal, self.cached.stats().hits - hits))
    }

    /// Both reads again, straight after a write through the cache that changed the member:
    /// neither may come from memory (no feed could have told the cache; see
    /// [`feedless_cache`]).
    async fn read_after_write(
        &self,
    ) -> Result<(RefreshGrant, PrincipalRecord), Box<dyn std::error::Error>> {
        let (grant, principal, hits) = self.read().await?;
        assert_eq!(hits, 0, "a stale entry answered after the write");
        Ok((grant, principal))
    }

    fn audit(&self, action: &'static str) -> AuditEvent {
        audit_about(action, T0 + 1, &self.member)
    }
}

// Each write through the cache that can change a user's standing drops that user's entries
// before it returns, so the next read on this replica sees it without waiting for the change
// feed. One contract per write: each fails when its own invalidation is missing.

async fn cache_forgets_at_once_revoke_all_by_token(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let event = warm.audit("tokens.revoked_all");
    let decide: RevokeDecision = Arc::new(move |_| Some(event.clone()));
    let revoked = warm
        .cached
        .revoke_all_by_token(&hash(WARM_TOKEN), decide)
        .await?;
    assert_eq!(
        revoked,
        Some(RevokedAll {
            user_id: warm.member.id.clone(),
            moved: true,
        })
    );
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!((grant.user_epoch, principal.user.token_epoch), (1, 1));
    Ok(())
}

async fn cache_forgets_at_once_remove_user(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let removal = warm
        .cached
        .remove_user(&warm.member.id, T0 + 1, warm.audit("user.removed"))
        .await?;
    assert_eq!(removal, Removal::Removed);
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!(grant.user_removed_at, Some(T0 + 1));
    assert_eq!(principal.user.removed_at, Some(T0 + 1));
    Ok(())
}

async fn cache_forgets_at_once_set_password_hash(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let id = &warm.member.id;
    let changed = warm.audit("user.password_changed");
    assert!(warm.cached.set_password_hash(id, "h", changed).await?);
    // The principal's user row is what a password change touches (its `updated_at`); the
    // grant shows no difference, but must not come from memory either.
    let (_, principal) = warm.read_after_write().await?;
    assert_eq!(principal.user.updated_at, T0 + 1);
    Ok(())
}

async fn cache_forgets_at_once_revoke_session(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let (session, id) = (&warm.session, &warm.member.id);
    let revoked = warm.audit("token.revoked");
    assert!(warm.cached.revoke_session(session, id, revoked).await?);
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!(grant.token_revoked_at, Some(T0 + 1));
    assert_eq!(principal.session_revoked_at, Some(Some(T0 + 1)));
    Ok(())
}

async fn cache_forgets_at_once_update_profile(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let changes = ProfileChanges {
        role: Some("admin".into()),
        ..ProfileChanges::default()
    };
    let updated = warm.audit("user.updated");
    assert!(
        warm.cached
            .update_profile(&warm.member.id, changes, updated)
            .await?
    );
    let (_, principal) = warm.read_after_write().await?;
    assert_eq!(principal.user.role, "admin");
    Ok(())
}

// ---- background cleanup -----------------------------------------------------------------

/// Far in the future: rows that expire then are live throughout the test.
const LATER: i64 = T0 + 10_000_000_000;

async fn cleanup_deletes_garbage_only(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _owner) = org_with_owner(store).await?;
    let alice = add_user(store, &org, "alice@example.com", "guest", T0).await?;
    let bob = add_user(store, &org, "bob@example.com", "guest", T0).await?;
    let carol = add_user(store, &org, "carol@example.com", "guest", T0).await?;
    let dave = add_user(store, &org, "dave@example.com", "guest", T0).await?;
    let mint = |user: &User, seed: u8| {
        let token = refresh_token(user, seed, None);
        async move {
            store
                .insert_refresh_token(token.clone(), audit("t", T0 + 10))
                .await
                .map(|_| token)
        }
    };
    mint(&alice, 1).await?;
    // Bob revokes all at T0+100 and then gets a new, live token.
    mint(&bob, 2).await?;
    assert!(
        store
            .revoke_all_tokens(&bob.id, 0, audit("revoke_all", T0 + 100))
            .await?
    );
    mint(&bob, 3).await?;
    // Carol is removed at T0+200.
    mint(&carol, 4).await?;
    assert_eq!(
        store
            .remove_user(&carol.id, T0 + 200, audit("remove", T0 + 200))
            .await?,
        Removal::Removed
    );
    // Dave's one session is revoked at T0+300.
    let daves = mint(&dave, 5).await?;
    assert!(
        store
            .revoke_session(&daves.id, &dave.id, audit("revoke", T0 + 300))
            .await?
    );

    // Codes: unused and expired, unused and live, redeemed and expired.
    store
        .insert_authorization_code(auth_code(&alice, 10))
        .await?;
    store
        .insert_authorization_code(NewAuthorizationCode {
            expires_at: LATER,
            ..auth_code(&alice, 11)
        })
        .await?;
    store
        .insert_authorization_code(auth_code(&alice, 12))
        .await?;
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(12), T0 + 10, audit("code.replayed", T0 + 10))
            .await?,
        CodeRedemption::Redeemed(_)
    ));
    store.insert_device_code(device_code(20)).await?;
    store
        .insert_device_code(NewDeviceCode {
            expires_at: LATER,
            ..device_code(21)
        })
        .await?;
    store
        .insert_browser_session(&hash(30), &alice.id, T0, T0 + 1000)
        .await?;
    store
        .insert_browser_session(&hash(31), &alice.id, T0, LATER)
        .await?;
    // Invitations: expired, spent, live.
    let erin = add_user(store, &org, "erin@example.com", "guest", T0).await?;
    let frank = add_user(store, &org, "frank@example.com", "guest", T0).await?;
    let gina = add_user(store, &org, "gina@example.com", "guest", T0).await?;
    store
        .insert_invitation(&hash(40), &erin.id, T0 + 1000, audit("invite", T0))
        .await?;
    store
        .insert_invitation(&hash(41), &frank.id, LATER, audit("invite", T0))
        .await?;
    assert!(
        store
            .accept_invitation(&hash(41), "h", audit("accept", T0 + 400))
            .await?
    );
    store
        .insert_invitation(&hash(42), &gina.id, LATER, audit("invite", T0))
        .await?;
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .rotate_signing_key(signing_key("k2", T0 + 500), audit("keys.rotated", T0 + 500))
        .await?;

    let now = T0 + 1_000_000;
    let delete = |kind: Garbage, before: i64| store.delete_garbage(kind, before, 500);
    // Dead tokens within their grace period stay, and still say why they are dead.
    assert_eq!(delete(Garbage::RevokedRefreshTokens, T0 + 300).await?, 0);
    assert_eq!(delete(Garbage::StaleEpochRefreshTokens, T0 + 100).await?, 0);
    let daves_grant = store.find_refresh_grant(&hash(5)).await?.ok_or("gone")?;
    assert_eq!(daves_grant.token_revoked_at, Some(T0 + 300));
    assert!(store.find_refresh_grant(&hash(2)).await?.is_some());
    // Past it they go; live tokens stay.
    assert_eq!(delete(Garbage::RevokedRefreshTokens, T0 + 301).await?, 1);
    assert_eq!(delete(Garbage::StaleEpochRefreshTokens, T0 + 201).await?, 2);
    for (seed, live) in [(1, true), (2, false), (3, true), (4, false), (5, false)] {
        assert_eq!(
            store.find_refresh_grant(&hash(seed)).await?.is_some(),
            live,
            "token {seed}"
        );
    }

    assert_eq!(delete(Garbage::UnusedAuthorizationCodes, now).await?, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM authorization_codes").await?,
        2,
        "the redeemed code is kept for replay detection"
    );
    assert_eq!(delete(Garbage::AuthorizationCodes, now).await?, 1);
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(11), T0 + 20, audit("code.replayed", T0 + 20))
            .await?,
        CodeRedemption::Redeemed(_)
    ));
    assert_eq!(delete(Garbage::DeviceCodes, now).await?, 1);
    assert!(store.poll_device_code(&hash(21), T0).await?.is_some());
    assert_eq!(delete(Garbage::BrowserSessions, now).await?, 1);
    assert!(store.browser_session_user(&hash(31), T0).await?.is_some());
    assert_eq!(delete(Garbage::ExpiredInvitations, now).await?, 1);
    assert_eq!(delete(Garbage::SpentInvitations, now).await?, 1);
    assert!(store.invitation_user(&hash(42), T0).await?.is_some());
    assert_eq!(db.count("SELECT COUNT(*) FROM invitations").await?, 1);

    assert_eq!(delete(Garbage::RetiredSigningKeys, T0 + 500).await?, 0);
    assert_eq!(delete(Garbage::RetiredSigningKeys, T0 + 501).await?, 1);
    let kids: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, vec!["k2".to_owned()]);

    let old_events = db
        .count("SELECT COUNT(*) FROM audit_events WHERE at < 1700000000250")
        .await?;
    let newer_events = db
        .count("SELECT COUNT(*) FROM audit_events WHERE at >= 1700000000250")
        .await?;
    assert!(old_events > 0 && newer_events > 0);
    assert_eq!(
        i64::try_from(delete(Garbage::AuditEvents, T0 + 250).await?)?,
        old_events
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        newer_events
    );
    // Nothing left: every kind but the audit trail (which ends `now`) deletes nothing more.
    for kind in Garbage::ALL
        .into_iter()
        .filter(|kind| *kind != Garbage::AuditEvents)
    {
        assert_eq!(delete(kind, now).await?, 0, "{kind:?}");
    }
    Ok(())
}

async fn cleanup_deletes_in_batches(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    for n in 0..4 {
        store
            .create_organization(new_org(&format!("o{n}"), T0), audit("org", T0 + n))
            .await?;
    }
    let _ = (org, owner);
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    assert_eq!(before, 5);
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        2
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        2
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        1
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        0
    );
    Ok(())
}

async fn cleanup_lock_takes_turns(db: Db) -> TestResult {
    let other = db.another().await?;
    let postgres = matches!(db.backend, Backend::Postgres(_));
    let lock = db.store.try_cleanup_lock().await?.ok_or("no lock")?;
    let second = other.try_cleanup_lock().await?;
    // PostgreSQL replicas take turns; SQLite has one server per file and nothing to share.
    assert_eq!(second.is_none(), postgres);
    if let Some(second) = second {
        second.release().await;
    }
    lock.release().await;
    let again = other.try_cleanup_lock().await?.ok_or("not released")?;
    // A round that ends without releasing (cancelled) must not leave the lock behind: its
    // connection is closed, and the server lets go of the lock when it notices.
    drop(again);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(lock) = db.store.try_cleanup_lock().await? {
            lock.release().await;
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err("the dropped lock was never released".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    other.close().await;
    Ok(())
}

async fn cleanup_statements_use_indexes(db: Db) -> TestResult {
    // Every batch must find its rows through an index, not by reading the whole table.
    for kind in Garbage::ALL {
        let statement = kind.delete_statement();
        let plan: Vec<String> = match &db.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
                    format!("EXPLAIN QUERY PLAN {statement}"),
                ))
                .bind(T0)
                .bind(500_i64)
                .fetch_all(&mut conn)
                .await?;
                conn.close().await?;
                rows.into_iter().map(|row| row.3).collect()
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                // Empty tables make a sequential scan the cheapest plan; forbid it to see
                // whether an index can serve the statement at all.
                sqlx::query("SET enable_seqscan = off")
                    .execute(&mut conn)
                    .await?;
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {statement}")))
                        .bind(T0)
                        .bind(500_i64)
                        .fetch_all(&mut conn)
                        .await?;
                conn.close().await?;
                rows
            }
        };
        let scans: Vec<&String> = plan
            .iter()
            .filter(|line| line.trim_start().starts_with("SCAN ") || line.contains("Seq Scan"))
            .collect();
        assert!(
            scans.is_empty(),
            "{kind:?} scans a table:\n{}",
            plan.join("\n")
        );
    }
    Ok(())
}

const POLICY: AttemptPolicy = AttemptPolicy {
    max_failures: 3,
    window_ms: 60_000,
    lock_ms: 1_000,
    max_lock_ms: 3_000,
};

async fn attempt_counters(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let key = "login:addr:192.0.2.1";
    assert_eq!(store.attempt_counter(key).await?, None);
    let trip = || audit("limit.tripped", T0);
    let first = store
        .record_attempt_failure(key, T0, POLICY, trip())
        .await?;
    assert_eq!(
        (first.failures, first.window_start, first.locked_until),
        (1, T0, 0)
    );
    store
        .record_attempt_failure(key, T0 + 1, POLICY, trip())
        .await?;
    assert!(recent_events(store, 10).await?.is_empty(), "no lock yet");
    // The third failure locks for the first lock time and is audited once.
    let third = store
        .record_attempt_failure(key, T0 + 2, POLICY, trip())
        .await?;
    assert_eq!((third.failures, third.locked_until), (3, T0 + 2 + 1_000));
    assert_eq!(store.attempt_counter(key).await?, Some(third));
    // Failures counted while locked lengthen the lock (doubling, capped) without new events.
    let fourth = store
        .record_attempt_failure(key, T0 + 3, POLICY, trip())
        .await?;
    assert_eq!(fourth.locked_until, T0 + 3 + 2_000);
    let fifth = store
        .record_attempt_failure(key, T0 + 4, POLICY, trip())
        .await?;
    assert_eq!(fifth.locked_until, T0 + 4 + 3_000, "capped");
    let events = recent_events(store, 10).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "limit.tripped");
    // After the lock, a further failure inside the window locks again (longer) and is audited.
    let later = T0 + 10_000;
    let sixth = store
        .record_attempt_failure(key, later, POLICY, trip())
        .await?;
    assert_eq!((sixth.failures, sixth.locked_until), (6, later + 3_000));
    assert_eq!(recent_events(store, 10).await?.len(), 2);
    // Once the window and the lock have passed, counting starts again.
    let fresh = T0 + 120_000;
    let restart = store
        .record_attempt_failure(key, fresh, POLICY, trip())
        .await?;
    assert_eq!((restart.failures, restart.window_start), (1, fresh));
    assert!(restart.locked_until <= fresh);
    // Cleanup deletes counters whose window and lock ended before the cutoff, and no other.
    let old_key = "login:addr:192.0.2.3";
    store
        .record_attempt_failure(old_key, T0, POLICY, trip())
        .await?;
    let locked_key = "login:addr:192.0.2.4";
    for at in [T0, T0 + 1, T0 + 2] {
        store
            .record_attempt_failure(locked_key, at, POLICY, trip())
            .await?;
    }
    assert_eq!(
        store
            .delete_garbage(Garbage::AttemptCounters, T0 + 5, 500)
            .await?,
        1,
        "only {old_key}: {locked_key} is still locked at the cutoff"
    );
    assert_eq!(store.attempt_counter(old_key).await?, None);
    assert!(store.attempt_counter(locked_key).await?.is_some());
    assert_eq!(
        store
            .delete_garbage(Garbage::AttemptCounters, T0 + 60_000, 500)
            .await?,
        1
    );
    assert_eq!(store.attempt_counter(locked_key).await?, None);
    assert_eq!(store.attempt_counter(old_key).await?, None);
    assert_eq!(store.attempt_counter(key).await?, Some(restart));
    // Other keys are separate; a success forgets the key.
    assert_eq!(store.attempt_counter("login:addr:192.0.2.2").await?, None);
    store.clear_attempts(key).await?;
    assert_eq!(store.attempt_counter(key).await?, None);
    store.clear_attempts(key).await?;
    assert_eq!(db.count("SELECT COUNT(*) FROM attempt_counters").await?, 0);
    Ok(())
}

/// Replicas (or an admin process) see one counter, and concurrent failures all count.
async fn attempt_counters_shared_and_racing(db: Db) -> TestResult {
    let other = db.another().await?;
    let key = "refresh:addr:192.0.2.9";
    let policy = AttemptPolicy {
        max_failures: 100,
        ..POLICY
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .record_attempt_failure(key, T0 + i, policy, audit("limit.tripped", T0))
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seen = other.attempt_counter(key).await?;
    assert_eq!(seen.map(|c| c.failures), Some(8));
    assert_eq!(db.store.attempt_counter(key).await?, seen);
    other.close().await;
    Ok(())
}

// ---- the audit query --------------------------------------------------------------------

/// An event of `org` at `at`, by `actor`, about `subject`, with a user agent.
fn org_event(
    action: &'static str,
    at: i64,
    org: Option<&Organization>,
    actor: String,
    subject: Option<&User>,
) -> AuditEvent {
    AuditEvent {
        at,
        action,
        actor,
        org_id: org.map(|o| o.id.clone()),
        subject_user_id: subject.map(|u| u.id.clone()),
        address: Some("192.0.2.7".into()),
        user_agent: Some("conformance/1.0".into()),
        detail: None,
    }
}

/// Reads every page of `query`, `size` at a time, as the API does: the next page starts
/// before the last id of the previous one.
async fn all_pages(
    store: &dyn Store,
    query: &AuditQuery,
    size: i64,
) -> Result<(Vec<i64>, usize), Box<dyn std::error::Error>> {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut before_id = None;
    loop {
        let page_query = AuditQuery {
            before_id,
            ..query.clone()
        };
        let page = store.audit_events_page(&page_query, size).await?;
        assert!(page.len() as i64 <= size);
        ids.extend(page.iter().map(|e| e.id));
        if page.len() as i64 == size {
            pages += 1;
            before_id = page.last().map(|e| e.id);
        } else {
            return Ok((ids, pages + usize::from(!page.is_empty())));
        }
    }
}

async fn audit_query_filters_pages_and_orgs(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org_a, owner_a) = org_with_owner(store).await?;
    let member_a = add_user(store, &org_a, "m@example.com", "guest", T0).await?;
    let org_b = new_org("B", T0);
    store
        .create_organization(org_b.clone(), audit("org.created", T0))
        .await?;
    let org_b = store
        .organization_by_tenant(&org_b.tenant_id)
        .await?
        .ok_or("no org B")?;
    let owner_b = add_user(store, &org_b, "b@example.com", "owner", T0).await?;
    let actor = |u: &User| format!("user:{}", u.id);
    // Org A: 7 events; org B: 2; one of no organization.
    let a_events = [
        org_event(
            "login.failed",
            T0 + 100,
            Some(&org_a),
            "address:192.0.2.7".into(),
            Some(&member_a),
        ),
        org_event(
            "login.succeeded",
            T0 + 200,
            Some(&org_a),
            actor(&member_a),
            Some(&member_a),
        ),
        org_event(
            "user.role_changed",
            T0 + 300,
            Some(&org_a),
            actor(&owner_a),
            Some(&member_a),
        ),
        org_event(
            "token.minted",
            T0 + 400,
            Some(&org_a),
            actor(&owner_a),
            Some(&owner_a),
        ),
        org_event(
            "login.failed",
            T0 + 500,
            Some(&org_a),
            "address:192.0.2.7".into(),
            Some(&owner_a),
        ),
        org_event(
            "tokens.revoked_all",
            T0 + 600,
            Some(&org_a),
            actor(&owner_a),
            Some(&owner_a),
        ),
        org_event(
            "login.failed",
            T0 + 700,
            Some(&org_a),
            "address:192.0.2.7".into(),
            Some(&member_a),
        ),
    ];
    for event in a_events {
        store.record_audit(event).await?;
    }
    store
        .record_audit(org_event(
            "login.failed",
            T0 + 150,
            Some(&org_b),
            actor(&owner_b),
            Some(&owner_b),
        ))
        .await?;
    store
        .record_audit(org_event(
            "login.failed",
            T0 + 250,
            None,
            "address:192.0.2.7".into(),
            None,
        ))
        .await?;
    store
        .record_audit(org_event(
            "token.minted",
            T0 + 350,
            Some(&org_b),
            actor(&owner_b),
            Some(&owner_b),
        ))
        .await?;

    let only_a = AuditQuery {
        org_id: Some(org_a.id.clone()),
        ..AuditQuery::default()
    };
    let everything_of_a = store.audit_events_page(&only_a, 100).await?;
    // The seven above, and the org's creation events written by the helpers (none carry
    // an org id), so exactly the seven.
    assert_eq!(everything_of_a.len(), 7);
    assert!(
        everything_of_a
            .iter()
            .all(|e| e.org_id.as_deref() == Some(org_a.id.as_str()))
    );
    assert!(
        everything_of_a.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let newest = &everything_of_a[0];
    assert_eq!(newest.action, "login.failed");
    assert_eq!(newest.at, T0 + 700);
    assert_eq!(newest.address.as_deref(), Some("192.0.2.7"));
    assert_eq!(
        newest.user_agent.as_deref(),
        Some("conformance/1.0"),
        "user agent read back"
    );
    assert_eq!(
        newest.subject_user_id.as_deref(),
        Some(member_a.id.as_str())
    );

    // Pages of 3: 3 + 3 + 1, every event once, in order.
    let (paged, pages) = all_pages(store, &only_a, 3).await?;
    let expected: Vec<i64> = everything_of_a.iter().map(|e| e.id).collect();
    assert_eq!(paged, expected, "no gaps, no duplicates");
    assert_eq!(pages, 3);

    // Filters.
    let failed = AuditQuery {
        action: Some("login.failed".into()),
        ..only_a.clone()
    };
    let failed = store.audit_events_page(&failed, 100).await?;
    assert_eq!(
        failed.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![T0 + 700, T0 + 500, T0 + 100]
    );
    let by_or_about_member = AuditQuery {
        user_id: Some(member_a.id.clone()),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&by_or_about_member, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(times, vec![T0 + 700, T0 + 300, T0 + 200, T0 + 100]);
    let by_or_about_owner = AuditQuery {
        user_id: Some(owner_a.id.clone()),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&by_or_about_owner, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(
        times,
        vec![T0 + 600, T0 + 500, T0 + 400, T0 + 300],
        "as actor or subject"
    );
    let window = AuditQuery {
        since: Some(T0 + 200),
        until: Some(T0 + 500),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&window, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(
        times,
        vec![T0 + 400, T0 + 300, T0 + 200],
        "since inclusive, until exclusive"
    );
    let combined = AuditQuery {
        action: Some("login.failed".into()),
        user_id: Some(member_a.id.clone()),
        since: Some(T0 + 101),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&combined, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(times, vec![T0 + 700]);

    // Organizations do not see each other, whatever the filter.
    let b_with_a_user = AuditQuery {
        org_id: Some(org_b.id.clone()),
        user_id: Some(member_a.id.clone()),
        ..AuditQuery::default()
    };
    assert!(
        store
            .audit_events_page(&b_with_a_user, 100)
            .await?
            .is_empty()
    );
    let only_b = AuditQuery {
        org_id: Some(org_b.id.clone()),
        ..AuditQuery::default()
    };
    let b: Vec<i64> = store
        .audit_events_page(&only_b, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(b, vec![T0 + 350, T0 + 150]);
    // The operator's view: every organization's, and events of none.
    let all_failed = AuditQuery {
        action: Some("login.failed".into()),
        ..AuditQuery::default()
    };
    let all_failed = store.audit_events_page(&all_failed, 100).await?;
    assert_eq!(all_failed.len(), 5);
    assert!(all_failed.iter().any(|e| e.org_id.is_none()));
    Ok(())
}

async fn audit_query_pages_are_bounded(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let total = MAX_AUDIT_PAGE + 5;
    for n in 0..total {
        store
            .record_audit(org_event(
                "token.minted",
                T0 + n,
                Some(&org),
                "operator".into(),
                Some(&owner),
            ))
            .await?;
    }
    let query = AuditQuery {
        org_id: Some(org.id.clone()),
        ..AuditQuery::default()
    };
    let page = store.audit_events_page(&query, 1_000_000).await?;
    assert_eq!(
        page.len() as i64,
        MAX_AUDIT_PAGE + 1,
        "capped: a page and one to tell"
    );
    assert_eq!(
        store.audit_events_page(&query, 0).await?.len(),
        1,
        "at least one"
    );
    let (ids, _) = all_pages(store, &query, MAX_AUDIT_PAGE).await?;
    assert_eq!(ids.len() as i64, total);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    Ok(())
}

async fn audit_query_uses_its_index(db: Db) -> TestResult {
    // An organization's page, filtered or not, must walk the (org_id, id) index in order
    // from the cursor: no table scan, and no sort of the organization's whole history.
    let queries = [
        AuditQuery {
            org_id: Some("org".into()),
            before_id: Some(1000),
            ..AuditQuery::default()
        },
        AuditQuery {
            org_id: Some("org".into()),
            action: Some("login.failed".into()),
            user_id: Some("user".into()),
            since: Some(T0),
            until: Some(T0 + 1),
            before_id: Some(1000),
        },
    ];
    for query in queries {
        let (sql, binds) = query.statement(50);
        let plan: Vec<String> = match &db.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let mut explain = sqlx::query_as::<_, (i64, i64, i64, String)>(
                    sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")),
                );
                for bind in binds {
                    explain = match bind {
                        AuditBind::Text(text) => explain.bind(text),
                        AuditBind::Int(number) => explain.bind(number),
                    };
                }
                let rows = explain.fetch_all(&mut conn).await?;
                conn.close().await?;
                rows.into_iter().map(|row| row.3).collect()
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query("SET enable_seqscan = off")
                    .execute(&mut conn)
                    .await?;
                let mut explain =
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")));
                for bind in binds {
                    explain = match bind {
                        AuditBind::Text(text) => explain.bind(text),
                        AuditBind::Int(number) => explain.bind(number),
                    };
                }
                let rows = explain.fetch_all(&mut conn).await?;
                conn.close().await?;
                rows
            }
        };
        let text = plan.join("\n");
        assert!(
            text.contains("audit_events_org_id"),
            "{query:?} does not use the index:\n{text}"
        );
        assert!(
            !text.contains("Seq Scan") && !text.contains("TEMP B-TREE") && !text.contains("Sort"),
            "{query:?} scans or sorts:\n{text}"
        );
    }
    Ok(())
}

async fn role_changes_keep_an_owner(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let admin = add_user(store, &org, "a@example.com", "admin", T0).await?;
    let to = |role: &str| ProfileChanges {
        role: Some(role.into()),
        ..ProfileChanges::default()
    };
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    // The last Owner cannot be demoted; nothing changes and nothing is audited.
    assert!(
        !store
            .update_profile(
                &owner.id,
                to("admin"),
                audit_about("user.role_changed", T0 + 1, &owner)
            )
            .await?
    );
    assert_eq!(
        store.member(&org.id, &owner.id).await?.ok_or("gone")?.role,
        "owner"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await?, before);
    // With a second Owner, the first may step down.
    assert!(
        store
            .update_profile(
                &admin.id,
                to("owner"),
                audit_about("user.role_changed", T0 + 2, &admin)
            )
            .await?
    );
    assert!(
        store
            .update_profile(
                &owner.id,
                to("guest"),
                audit_about("user.role_changed", T0 + 3, &owner)
            )
            .await?
    );
    assert_eq!(
        store.member(&org.id, &owner.id).await?.ok_or("gone")?.role,
        "guest"
    );
    assert_eq!(
        store.member(&org.id, &admin.id).await?.ok_or("gone")?.role,
        "owner"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        before + 2
    );
    // A profile change without a role leaves the role alone, also for the last Owner.
    let rename = ProfileChanges {
        name: Some("Still Owner".into()),
        ..ProfileChanges::default()
    };
    assert!(
        store
            .update_profile(
                &admin.id,
                rename,
                audit_about("user.updated", T0 + 4, &admin)
            )
            .await?
    );
    assert_eq!(
        store.member(&org.id, &admin.id).await?.ok_or("gone")?.role,
        "owner"
    );
    // Two Owners demoting each other at once: one of them stays Owner. Several rounds, each
    // with the survivor of the last and a new Owner, so a lost race shows up reliably.
    let mut survivor = admin;
    for round in 0..5_i64 {
        let at = T0 + 10 + round;
        let newcomer = add_user(store, &org, &format!("o{round}@example.com"), "owner", at).await?;
        let (first, other) = tokio::join!(
            store.update_profile(
                &survivor.id,
                to("guest"),
                audit_about("user.role_changed", at, &survivor)
            ),
            store.update_profile(
                &newcomer.id,
                to("guest"),
                audit_about("user.role_changed", at, &newcomer)
            ),
        );
        let (first, other) = (first?, other?);
        assert_eq!(
            u8::from(first) + u8::from(other),
            1,
            "exactly one demotion wins"
        );
        let owners: Vec<User> = store
            .list_users(&org.id, false)
            .await?
            .into_iter()
            .filter(|u| u.role == "owner")
            .collect();
        assert_eq!(owners.len(), 1, "round {round}");
        survivor = owners.into_iter().next().ok_or("no Owner")?;
    }
    Ok(())
}

// ---- session policies -------------------------------------------------------------------

/// An organization's session policy: off by default, changed only from the expected value
/// (with its audit row, or not at all), per organization, and read with every refresh grant
/// together with the token's creation and last use. A cache forgets grants when this process
/// changes a policy, and when an organization-wide change from elsewhere is applied.
async fn session_policies(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let other_org = new_org("Other", T0);
    let other_org_id = other_org.id.clone();
    store
        .create_organization(other_org, audit("org.created", T0))
        .await?;
    let other_user = store
        .create_user(
            new_user(&other_org_id, "o@example.com", "owner", T0),
            audit("user.add", T0),
        )
        .await?;
    store
        .insert_refresh_token(refresh_token(&owner, 1, None), audit("t", T0))
        .await?;
    store
        .insert_refresh_token(refresh_token(&other_user, 2, None), audit("t", T0))
        .await?;

    // Off by default; an unknown organization has none.
    let off = SessionPolicy::default();
    assert_eq!(store.session_policy(&org.id).await?, Some(off));
    assert_eq!(store.session_policy("no-such-org").await?, None);
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, off);
    assert_eq!(grant.token_created_at, T0 + 10);
    assert_eq!(grant.token_last_used_at, None);
    store
        .record_token_uses(&[TokenUse {
            token_id: grant.token_id.clone(),
            at: T0 + 50,
            address: None,
        }])
        .await?;
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_last_used_at, Some(T0 + 50));
    // The access-token path reads the same facts about the session it came from.
    let principal = store
        .principal(&owner.id, &grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.session_created_at, Some(T0 + 10));
    assert_eq!(principal.session_last_used_at, Some(T0 + 50));
    assert_eq!(principal.policy, off);
    let sessionless = store
        .principal(&owner.id, "no-such-session")
        .await?
        .ok_or("no principal")?;
    assert_eq!(
        (
            sessionless.session_created_at,
            sessionless.session_last_used_at
        ),
        (None, None)
    );

    // Set: the grant carries it at once; the other organization keeps its own.
    let strict = SessionPolicy {
        idle_expiry_secs: Some(86_400),
        max_age_secs: Some(2 * 86_400),
    };
    let changed = |at| AuditEvent {
        org_id: Some(org.id.clone()),
        ..audit("org.policy_changed", at)
    };
    assert!(
        store
            .set_session_policy(&org.id, off, strict, changed(T0 + 60))
            .await?
    );
    assert_eq!(store.session_policy(&org.id).await?, Some(strict));
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, strict);
    assert_eq!(store.session_policy(&other_org_id).await?, Some(off));
    let other_grant = store
        .find_refresh_grant(&hash(2))
        .await?
        .ok_or("no grant")?;
    assert_eq!(other_grant.policy, off);
    let principal = store
        .principal(&owner.id, &grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.policy, strict);
    let other_principal = store
        .principal(&other_user.id, &other_grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(other_principal.policy, off);

    // A stale expectation, or an unknown organization, changes nothing and audits nothing.
    let half = SessionPolicy {
        idle_expiry_secs: None,
        max_age_secs: Some(86_400),
    };
    assert!(
        !store
            .set_session_policy(&org.id, off, half, changed(T0 + 61))
            .await?
    );
    assert!(
        !store
            .set_session_policy("no-such-org", off, half, changed(T0 + 62))
            .await?
    );
    assert_eq!(store.session_policy(&org.id).await?, Some(strict));
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE action = 'org.policy_changed'")
            .await?,
        1
    );
    let newest = recent_events(store, 1).await?;
    assert_eq!(newest[0].action, "org.policy_changed");
    assert_eq!(newest[0].org_id.as_deref(), Some(org.id.as_str()));
    assert_eq!(newest[0].subject_user_id, None);

    // Each limit on its own, and off again.
    assert!(
        store
            .set_session_policy(&org.id, strict, half, changed(T0 + 63))
            .await?
    );
    assert_eq!(store.session_policy(&org.id).await?, Some(half));
    assert!(
        store
            .set_session_policy(&org.id, half, off, changed(T0 + 64))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, off);

    // The cache: this process's change is seen at once ...
    let cached = live_cache(&db, 1000).await?;
    cached.find_refresh_grant(&hash(1)).await?;
    cached.principal(&owner.id, &grant.token_id).await?;
    assert!(
        cached
            .set_session_policy(&org.id, off, strict, changed(T0 + 65))
            .await?
    );
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, strict);
    let principal = cached
        .principal(&owner.id, &grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.policy, strict);
    // ... another process's change only once the feed hands it on (the positive control that
    // the cache is in the way) ...
    let other = db.another().await?;
    assert!(
        other
            .set_session_policy(&org.id, strict, half, changed(T0 + 66))
            .await?
    );
    let stale = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(stale.policy, strict);
    // ... as an organization-wide change (the audit row names no user).
    cached.apply(&Change {
        action: "org.policy_changed".into(),
        user_id: None,
    });
    let fresh = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(fresh.policy, half);
    other.close().await;
    Ok(())
}
