//! Accounts: organizations, identities (people who sign in) and their members (users of
//! organizations), who may change them, invitations, passwords and resets, memberships, the
//! first-start bootstrap, and the opaque public ids (`base64("User:<uuid>")`, as Prismatic's)
//! used by the API and the admin commands.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::roles::Role;
use super::{DomainError, RequestMeta, now_ms, passwords, secrets};
use crate::store::{
    AddedMember, AuditEvent, Delivery, Identity, JoinExisting, Membership, NewOrganization,
    NewUser, Organization, ProfileChanges, Refusal, Store, User,
};
use crate::tokens::hash_secret;

/// Lower-cases and checks an email address (one `@`, no spaces, at most 254 characters).
pub fn normalize_email(input: &str) -> Result<String, DomainError> {
    let email = input.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(DomainError::InvalidInput(
            "not a valid email address".into(),
        ))
    }
}

/// The opaque public id of a record: `base64("<Kind>:<uuid>")`.
pub fn public_id(kind: &str, id: &str) -> String {
    STANDARD.encode(format!("{kind}:{id}"))
}

/// The inner id of a public id of `kind`, if it is one.
pub fn parse_public_id(kind: &str, public: &str) -> Option<String> {
    let decoded = String::from_utf8(STANDARD.decode(public).ok()?).ok()?;
    decoded
        .strip_prefix(kind)?
        .strip_prefix(':')
        .map(str::to_owned)
}

/// A user to add.
#[derive(Debug, Clone)]
pub struct UserDraft {
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub password: Option<String>,
    pub external_id: Option<String>,
}

/// An audit event about `subject`.
fn user_event(
    action: &'static str,
    actor: String,
    subject: &User,
    meta: &RequestMeta,
    detail: Option<String>,
) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action,
        actor,
        org_id: Some(subject.org_id.clone()),
        subject_user_id: Some(subject.id.clone()),
        address: meta.address.clone(),
        user_agent: meta.user_agent.clone(),
        detail,
    }
}

/// How long an invitation link works.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// How long a password-reset link works.
pub const RESET_TTL_MS: i64 = 3600 * 1000;

/// What the first start created.
#[derive(Debug)]
pub struct Bootstrapped {
    pub org: Organization,
    pub owner_email: String,
}

/// One page of an organization's active users, oldest first.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<User>,
    pub has_next_page: bool,
}

/// Organizations and users, over the store: every account rule that reads or writes one.
pub struct Accounts<'s> {
    store: &'s dyn Store,
}

impl<'s> Accounts<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Self { store }
    }

    /// Adds `draft.email` to `org`: a new identity with its first member, or a member of the
    /// existing identity that joins as `join` says. `actor` names who did it in the audit
    /// trail; `acting` is the member whose role the write checks (`None`: an operator).
    async fn add_user(
        &self,
        org: &Organization,
        draft: UserDraft,
        actor: String,
        acting: Option<&User>,
        join: JoinExisting,
        meta: &RequestMeta,
    ) -> Result<AddedMember, DomainError> {
        let email = normalize_email(&draft.email)?;
        let name = draft
            .name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        if name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err(DomainError::InvalidInput(
                "the name must have at most 200 characters".into(),
            ));
        }
        let password_hash = match draft.password {
            Some(password) => Some(passwords::hash(password).await?),
            None => None,
        };
        let now = now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let detail = serde_json::json!({ "email": email, "role": draft.role.key() }).to_string();
        let user = NewUser {
            id: id.clone(),
            org_id: org.id.clone(),
            name: name.unwrap_or_else(|| email.clone()),
            email,
            role: draft.role.key().to_owned(),
            password_hash,
            external_id: draft
                .external_id
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty()),
            created_at: now,
            join_existing: join,
            // An Admin's new identity: its first-password link may be handed to that
            // organization's Admins (when no mail can carry it).
            invited_by_org: acting.map(|_| org.id.clone()),
        };
        let audit = AuditEvent {
            at: now,
            action: "user.created",
            actor,
            org_id: Some(org.id.clone()),
            subject_user_id: Some(id),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(detail),
        };
        let acting_id = acting.map(|a| a.id.as_str());
        match self.store.add_member(user, acting_id, audit).await? {
            Ok(added) => Ok(added),
            Err(refusal) => Err(refused(refusal)),
        }
    }

    /// An operator adds a person to `org` (`prismd users add`): a new identity, or the
    /// existing one joins at once. A password is only for a new identity.
    pub async fn operator_add_user(
        &self,
        org: &Organization,
        draft: UserDraft,
    ) -> Result<AddedMember, DomainError> {
        self.add_user(
            org,
            draft,
            "operator".into(),
            None,
            JoinExisting::AtOnce,
            &RequestMeta::default(),
        )
        .await
    }

    /// Removes a user: from this moment none of their tokens is honoured. `acting` is the
    /// member whose role the write checks (`None`: an operator).
    pub async fn remove_user(
        &self,
        user: &User,
        actor: String,
        acting: Option<&User>,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let now = now_ms();
        let audit = user_event(
            "user.removed",
            actor,
            user,
            meta,
            Some(serde_json::json!({ "email": user.email }).to_string()),
        );
        self.store
            .remove_user(&user.id, now, acting.map(|a| a.id.as_str()), audit)
            .await?
            .map_err(refused)
    }

    /// Adds a user to the actor's organization; only Owners and Admins may, and only Owners add
    /// Owners.
    pub async fn create_member(
        &self,
        actor: &User,
        org: &Organization,
        draft: UserDraft,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        let actor_role = Role::of(actor);
        if !actor_role.manages_users() {
            return Err(DomainError::AccessDenied(
                "only Owners and Admins can add users".into(),
            ));
        }
        if draft.role == Role::Owner && actor_role != Role::Owner {
            return Err(DomainError::AccessDenied(
                "only Owners can add Owners".into(),
            ));
        }
        // A person who signs in elsewhere already joins only once they accept; nobody here
        // gets to choose their password.
        let added = self
            .add_user(
                org,
                draft,
                format!("user:{}", actor.id),
                Some(actor),
                JoinExisting::Pending,
                meta,
            )
            .await?;
        Ok(added.user)
    }

    /// The active member `user_id` of the actor's organization; other organizations' users are
    /// indistinguishable from unknown ones.
    pub async fn member(&self, actor: &User, user_id: &str) -> Result<User, DomainError> {
        self.store
            .member(&actor.org_id, user_id)
            .await?
            .ok_or_else(|| DomainError::NotFound("no such user in your organization".into()))
    }

    /// [`Self::member`], for people only: a service account's id is no user's here (service
    /// accounts are managed through their own operations).
    async fn person(&self, actor: &User, user_id: &str) -> Result<User, DomainError> {
        let member = self.member(actor, user_id).await?;
        if member.is_service_account() {
            return Err(DomainError::NotFound(
                "no such user in your organization".into(),
            ));
        }
        Ok(member)
    }

    /// The one rule for acting on another member: Owners and Admins manage users, and only Owners
    /// act on Owners. `verb` completes the refusal ("remove", "change", "invite").
    pub async fn managed_member(
        &self,
        actor: &User,
        user_id: &str,
        verb: &str,
    ) -> Result<User, DomainError> {
        let actor_role = Role::of(actor);
        if !actor_role.manages_users() {
            return Err(DomainError::AccessDenied(format!(
                "only Owners and Admins can {verb} users"
            )));
        }
        let target = self.person(actor, user_id).await?;
        if Role::of(&target) == Role::Owner && actor_role != Role::Owner {
            return Err(DomainError::AccessDenied(format!(
                "Admins cannot {verb} Owners"
            )));
        }
        Ok(target)
    }

    /// Removes a member: Owners and Admins may; Admins cannot remove Owners; the last Owner stays.
    pub async fn delete_member(
        &self,
        actor: &User,
        user_id: &str,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        let target = self.managed_member(actor, user_id, "remove").await?;
        self.remove_user(&target, format!("user:{}", actor.id), Some(actor), meta)
            .await?;
        Ok(target)
    }

    /// Changes a member's profile: everyone may change their own; Owners and Admins others'
    /// (Admins not Owners'). A role is changed only by Owners and Admins (also their own), only
    /// Owners make Owners, and the last Owner keeps the role. Audited as `user.updated` with the
    /// names of the changed fields, or, when the role changes, as `user.role_changed` with the
    /// old and new role.
    pub async fn update_member(
        &self,
        actor: &User,
        user_id: &str,
        changes: ProfileChanges,
        new_role: Option<Role>,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        let target = self.person(actor, user_id).await?;
        if target.id != actor.id || new_role.is_some() {
            self.managed_member(actor, user_id, "change").await?;
        }
        let old_role = Role::of(&target);
        if new_role == Some(Role::Owner)
            && old_role != Role::Owner
            && Role::of(actor) != Role::Owner
        {
            return Err(DomainError::AccessDenied(
                "only Owners can make Owners".into(),
            ));
        }
        let role_change = new_role.filter(|role| *role != old_role);
        let name = changes.name.map(|n| n.trim().to_owned());
        if name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.chars().count() > 200)
        {
            return Err(DomainError::InvalidInput(
                "the name must have 1 to 200 characters".into(),
            ));
        }
        let phone = changes.phone.map(|p| p.trim().to_owned());
        if phone.as_ref().is_some_and(|p| p.chars().count() > 40) {
            return Err(DomainError::InvalidInput(
                "the phone number must have at most 40 characters".into(),
            ));
        }
        let fields: Vec<&str> = [
            ("name", name.is_some()),
            ("phone", phone.is_some()),
            ("darkMode", changes.dark_mode.is_some()),
            (
                "darkModeSyncWithOs",
                changes.dark_mode_sync_with_os.is_some(),
            ),
            ("role", role_change.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect();
        // Never the values of name or phone: the event says what changed, the user record how.
        let (action, detail) = match role_change {
            Some(role) => (
                "user.role_changed",
                serde_json::json!({ "from": old_role.key(), "to": role.key(), "fields": fields }),
            ),
            None => ("user.updated", serde_json::json!({ "fields": fields })),
        };
        let audit = user_event(
            action,
            format!("user:{}", actor.id),
            &target,
            meta,
            Some(detail.to_string()),
        );
        let changes = ProfileChanges {
            name,
            phone,
            role: role_change.map(|role| role.key().to_owned()),
            ..changes
        };
        self.store
            .update_profile(&target.id, changes, Some(&actor.id), audit)
            .await?
            .map_err(refused)?;
        self.member(actor, user_id).await
    }

    /// Creates a single-use invitation for `user` to set their identity's first password;
    /// returns its secret token. An identity with a password gets none: an invitation must
    /// never become a way to reset someone else's password (an operator uses `prismd users
    /// set-password`, the person a reset link). A link handed to an Admin ([`Delivery::Handed`])
    /// is made only for an identity that Admin's organization created and nobody has used.
    pub async fn create_invitation(
        &self,
        user: &User,
        actor: String,
        delivery: Delivery,
        meta: &RequestMeta,
    ) -> Result<String, DomainError> {
        let identity = self.identity_of(user).await?;
        if identity.has_password {
            return Err(DomainError::Conflict(
                "this person has set a password already; invitations are for new people".into(),
            ));
        }
        if delivery == Delivery::Handed
            && identity.invited_by_org.as_deref() != Some(user.org_id.as_str())
        {
            return Err(DomainError::AccessDenied(
                "this person's sign-in exists outside this organization's invitation, so the \
                 link can only go to their mailbox: configure SMTP (--smtp-url), or ask the \
                 operator"
                    .into(),
            ));
        }
        let token = secrets::random_secret()?;
        let now = now_ms();
        let audit = user_event(
            "user.invited",
            actor,
            user,
            meta,
            Some(serde_json::json!({ "delivery": delivery.key() }).to_string()),
        );
        self.store
            .insert_invitation(
                &hash_secret(&token),
                &user.id,
                now + INVITATION_TTL_MS,
                delivery,
                audit,
            )
            .await?;
        Ok(token)
    }

    /// The identity of a member.
    pub async fn identity_of(&self, user: &User) -> Result<Identity, DomainError> {
        let found = match &user.identity_id {
            Some(id) => self.store.identity(id).await?,
            None => None,
        };
        found.ok_or_else(|| DomainError::NotFound("no active user with that id".into()))
    }

    /// The user an invitation token is for, if it is still usable.
    pub async fn invitation_user(&self, token: &str) -> Result<Option<User>, DomainError> {
        if token.len() != 43 {
            return Ok(None);
        }
        Ok(self
            .store
            .invitation_user(&hash_secret(token), now_ms())
            .await?)
    }

    /// Spends an invitation: sets the identity's first password. Fails when the link is used,
    /// expired or unknown.
    pub async fn accept_invitation(
        &self,
        token: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let password_hash = passwords::hash(password).await?;
        // The store names the user whose invitation it spends; the organization is read here
        // (an invitation never moves between users, so this is the same user).
        let invited = self.invitation_user(token).await?;
        let audit = AuditEvent {
            at: now_ms(),
            action: "user.password_set",
            actor: "invitation".into(),
            org_id: invited.as_ref().map(|u| u.org_id.clone()),
            subject_user_id: invited.map(|u| u.id),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: None,
        };
        if self
            .store
            .accept_invitation(&hash_secret(token), &password_hash, audit)
            .await?
        {
            Ok(())
        } else {
            Err(DomainError::NotFound(
                "this invitation link was already used or has expired".into(),
            ))
        }
    }

    /// Sets the password of a member's identity (an operator's `prismd users set-password`),
    /// replacing any previous one and ending its browser sessions.
    pub async fn set_password(
        &self,
        user: &User,
        password: String,
        actor: String,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let identity = self.identity_of(user).await?;
        self.set_identity_password(&identity, password, actor, "identity.password_set", meta)
            .await
    }

    async fn set_identity_password(
        &self,
        identity: &Identity,
        password: String,
        actor: String,
        action: &'static str,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let password_hash = passwords::hash(password).await?;
        let audit = identity_event(action, actor, identity, meta);
        if self
            .store
            .set_identity_password(&identity.id, &password_hash, audit)
            .await?
        {
            Ok(())
        } else {
            Err(DomainError::NotFound("no such identity".into()))
        }
    }

    /// A person changes their own password. `identity` must be the one
    /// `AuthService::authenticate_password` just returned for the current password: the page
    /// checks it there, under the sign-in limits and audit, so it is not hashed a second time.
    pub async fn change_password(
        &self,
        identity: &Identity,
        new_password: String,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        self.set_identity_password(
            identity,
            new_password,
            format!("identity:{}", identity.id),
            "identity.password_changed",
            meta,
        )
        .await
    }

    /// "Forgot password": a single-use reset link for the identity with this email, or `None`
    /// when there is none (the caller answers the same either way: no account enumeration).
    pub async fn start_password_reset(
        &self,
        email: &str,
        meta: &RequestMeta,
    ) -> Result<Option<(String, Identity)>, DomainError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        let Some(found) = self.store.identity_by_email(&email).await? else {
            return Ok(None);
        };
        let token = secrets::random_secret()?;
        let audit = identity_event(
            "identity.reset_requested",
            format!("address:{}", meta.address.as_deref().unwrap_or("-")),
            &found.identity,
            meta,
        );
        self.store
            .insert_password_reset(
                &hash_secret(&token),
                &found.identity.id,
                now_ms() + RESET_TTL_MS,
                audit,
            )
            .await?;
        Ok(Some((token, found.identity)))
    }

    /// The identity a reset token is for, if it is still usable.
    pub async fn password_reset_identity(
        &self,
        token: &str,
    ) -> Result<Option<Identity>, DomainError> {
        if token.len() != 43 {
            return Ok(None);
        }
        Ok(self
            .store
            .password_reset_identity(&hash_secret(token), now_ms())
            .await?)
    }

    /// Spends a reset link: the new password, and the email is proven.
    pub async fn accept_password_reset(
        &self,
        token: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let identity = self.password_reset_identity(token).await?;
        let password_hash = passwords::hash(password).await?;
        let audit = AuditEvent {
            at: now_ms(),
            action: "identity.password_reset",
            actor: "reset-link".into(),
            org_id: None,
            subject_user_id: None,
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: identity.map(|i| serde_json::json!({ "identity": i.id }).to_string()),
        };
        if self
            .store
            .accept_password_reset(&hash_secret(token), &password_hash, audit)
            .await?
        {
            Ok(())
        } else {
            Err(DomainError::NotFound(
                "this reset link was already used or has expired".into(),
            ))
        }
    }

    /// An identity's active memberships (joined and pending), oldest organization first.
    pub async fn memberships(&self, identity_id: &str) -> Result<Vec<Membership>, DomainError> {
        Ok(self.store.memberships(identity_id).await?)
    }

    /// The organizations where `user`'s identity is a joined member (the caller's tenants).
    pub async fn tenants_of(&self, user: &User) -> Result<Vec<Organization>, DomainError> {
        let Some(identity_id) = &user.identity_id else {
            return Ok(Vec::new());
        };
        Ok(self
            .memberships(identity_id)
            .await?
            .into_iter()
            .filter(|m| m.user.is_joined())
            .map(|m| m.org)
            .collect())
    }

    /// The identity accepts a membership an Owner or Admin offered it; its email must be
    /// verified (checked in the write).
    pub async fn accept_membership(
        &self,
        identity: &Identity,
        user_id: &str,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let pending = self
            .memberships(&identity.id)
            .await?
            .into_iter()
            .find(|m| m.user.id == user_id && m.user.joined_at.is_none())
            .ok_or_else(|| DomainError::NotFound("no such invitation to join".into()))?;
        if !identity.email_verified {
            return Err(DomainError::AccessDenied(
                "confirm your email address first: use 'Forgot password' to get a link by email"
                    .into(),
            ));
        }
        let audit = user_event(
            "membership.accepted",
            format!("identity:{}", identity.id),
            &pending.user,
            meta,
            None,
        );
        if self
            .store
            .accept_membership(&identity.id, user_id, audit)
            .await?
        {
            Ok(())
        } else {
            Err(DomainError::NotFound("no such invitation to join".into()))
        }
    }

    /// Emails the identity upgrade left without a password that still have none.
    pub async fn identity_upgrade_notices(&self) -> Result<Vec<String>, DomainError> {
        Ok(self.store.identity_upgrade_notices().await?)
    }

    /// On an empty database, creates the organization and its Owner. Returns `None` when an
    /// organization exists already.
    pub async fn bootstrap(
        &self,
        org_name: &str,
        owner_email: &str,
        password_hash: String,
    ) -> Result<Option<Bootstrapped>, DomainError> {
        let owner_email = normalize_email(owner_email)?;
        let now = now_ms();
        let org = Organization {
            id: uuid::Uuid::new_v4().to_string(),
            name: org_name.trim().to_owned(),
            tenant_id: uuid::Uuid::new_v4().to_string(),
            created_at: now,
        };
        let owner_id = uuid::Uuid::new_v4().to_string();
        let created = self
            .store
            .bootstrap(
                NewOrganization {
                    id: org.id.clone(),
                    name: org.name.clone(),
                    tenant_id: org.tenant_id.clone(),
                    created_at: now,
                },
                NewUser {
                    id: owner_id.clone(),
                    org_id: org.id.clone(),
                    email: owner_email.clone(),
                    name: "Owner".into(),
                    role: Role::Owner.key().into(),
                    password_hash: Some(password_hash),
                    external_id: None,
                    created_at: now,
                    join_existing: JoinExisting::Refuse,
                    invited_by_org: None,
                },
                AuditEvent {
                    at: now,
                    action: "org.bootstrapped",
                    actor: "operator".into(),
                    org_id: Some(org.id.clone()),
                    subject_user_id: Some(owner_id),
                    address: None,
                    user_agent: None,
                    detail: Some(
                        serde_json::json!({ "org": org.name, "owner": owner_email }).to_string(),
                    ),
                },
            )
            .await?;
        Ok(created.then_some(Bootstrapped { org, owner_email }))
    }

    /// The install's organization, or a clear error when the server was never started.
    pub async fn default_org(&self) -> Result<Organization, DomainError> {
        self.store.default_organization().await?.ok_or_else(|| {
            DomainError::NotFound(
                "no organization exists yet; start the server once ('prismd serve') to create it"
                    .into(),
            )
        })
    }

    /// The organization with `tenant_id`, or the install's first one when `None`.
    pub async fn org_by_tenant(
        &self,
        tenant_id: Option<&str>,
    ) -> Result<Organization, DomainError> {
        match tenant_id {
            None => self.default_org().await,
            Some(tenant) => self
                .store
                .organization_by_tenant(tenant)
                .await?
                .ok_or_else(|| {
                    DomainError::NotFound(format!("no organization with tenant id {tenant}"))
                }),
        }
    }

    /// Creates another organization (a tenant) and returns it.
    pub async fn create_org(&self, name: &str, actor: String) -> Result<Organization, DomainError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(DomainError::InvalidInput(
                "the organization name must have 1 to 200 characters".into(),
            ));
        }
        let now = now_ms();
        let org = Organization {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            tenant_id: uuid::Uuid::new_v4().to_string(),
            created_at: now,
        };
        let audit = AuditEvent {
            at: now,
            action: "org.created",
            actor,
            org_id: Some(org.id.clone()),
            subject_user_id: None,
            address: None,
            user_agent: None,
            detail: Some(serde_json::json!({ "name": org.name }).to_string()),
        };
        let new = NewOrganization {
            id: org.id.clone(),
            name: org.name.clone(),
            tenant_id: org.tenant_id.clone(),
            created_at: now,
        };
        self.store.create_organization(new, audit).await?;
        Ok(org)
    }

    /// The active user with this email in `org`.
    pub async fn find_user(&self, org: &Organization, email: &str) -> Result<User, DomainError> {
        let email = normalize_email(email)?;
        self.store
            .find_active_user_by_email(&org.id, &email)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no active user with email {email}")))
    }

    /// Every organization, oldest (the default one) first.
    pub async fn organizations(&self) -> Result<Vec<Organization>, DomainError> {
        Ok(self.store.list_organizations().await?)
    }

    /// The users of `org`, removed ones too when `all`.
    pub async fn users(&self, org: &Organization, all: bool) -> Result<Vec<User>, DomainError> {
        Ok(self.store.list_users(&org.id, all).await?)
    }

    /// Up to `limit` active users of the organization `org_id`, oldest first, after `position`
    /// (the creation time and id of the previous page's last user).
    pub async fn users_page(
        &self,
        org_id: &str,
        position: Option<(i64, String)>,
        limit: i64,
    ) -> Result<UserPage, DomainError> {
        // One more than asked for tells whether another page follows.
        let mut users = self.store.users_page(org_id, position, limit + 1).await?;
        let has_next_page = users.len() as i64 > limit;
        users.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(UserPage {
            users,
            has_next_page,
        })
    }

    /// The identity a typed sign-in email names, if any, with its joined members: what a
    /// failed sign-in is counted against and audited about. An email that cannot be one names
    /// nobody.
    pub async fn sign_in_subject(
        &self,
        email: &str,
    ) -> Result<Option<(Identity, Vec<User>)>, DomainError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        let Some(found) = self.store.identity_by_email(&email).await? else {
            return Ok(None);
        };
        let members = self
            .memberships(&found.identity.id)
            .await?
            .into_iter()
            .filter(|m| m.user.is_joined())
            .map(|m| m.user)
            .collect();
        Ok(Some((found.identity, members)))
    }
}

/// The domain's answer to a refusal the store's write made.
pub(super) fn refused(refusal: Refusal) -> DomainError {
    match refusal {
        Refusal::NotFound => DomainError::NotFound("no such user in your organization".into()),
        Refusal::Forbidden => DomainError::AccessDenied(
            "only Owners act on Owners or make Owners, and only Owners and Admins manage users"
                .into(),
        ),
        Refusal::LastOwner => DomainError::Conflict(
            "this is the organization's last Owner; make another user Owner first".into(),
        ),
        Refusal::AlreadyMember => DomainError::Conflict(
            "an active user with this email already exists in the organization".into(),
        ),
        Refusal::IdentityExists => DomainError::Conflict(
            "a person with this email already signs in here; only they set their password \
             (an operator can use 'prismd users set-password')"
                .into(),
        ),
        Refusal::NameTaken => DomainError::Conflict(
            "a service account with this name exists in the organization".into(),
        ),
    }
}

/// An audit event about an identity (the store writes it once per member).
fn identity_event(
    action: &'static str,
    actor: String,
    identity: &Identity,
    meta: &RequestMeta,
) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action,
        actor,
        org_id: None,
        subject_user_id: None,
        address: meta.address.clone(),
        user_agent: meta.user_agent.clone(),
        detail: Some(serde_json::json!({ "identity": identity.id }).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_normalize_and_validate() -> Result<(), DomainError> {
        assert_eq!(normalize_email(" Ada@Example.COM ")?, "ada@example.com");
        for bad in ["", "ada", "@x", "a@", "a b@x", "a@b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn public_ids_round_trip() {
        let id = public_id("User", "0b3c");
        assert_eq!(id, "VXNlcjowYjNj");
        assert_eq!(parse_public_id("User", &id).as_deref(), Some("0b3c"));
        assert_eq!(parse_public_id("Organization", &id), None);
    }
}
