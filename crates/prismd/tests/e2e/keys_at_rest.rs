//! Private signing keys encrypted at rest (`PRISMD_KEY_ENCRYPTION_KEY`, `..._FILE`) and the
//! automatic rotation (`--key-rotation-period`), end to end: what the database holds, starts
//! refused without the right key encryption key (and never printing it), plain keys sealed
//! when a key is given, and rotation on one server and on two PostgreSQL replicas.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{BIN, Options, Server, TestResult, temp_dir, user_with_token};
use crate::keys::{jwks_kids, kid_of};
use crate::postgres::FreshDatabase;

/// A key encryption key (32 bytes, base64), and the same bytes in hex.
const KEK: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const KEK_HEX: &str = "abcdef1234567890abcdef1234567890abcdef1234567890abcdef1234567890";
/// Two other valid key encryption keys.
const OTHER_KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const THIRD_KEK: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

const KEK_VAR: &str = "PRISMD_KEY_ENCRYPTION_KEY";
const KEK_FILE_VAR: &str = "PRISMD_KEY_ENCRYPTION_KEY_FILE";
const NEW_KEK_VAR: &str = "PRISMD_NEW_KEY_ENCRYPTION_KEY";
const NO_KEK: &str = "signing keys are encrypted; set PRISMD_KEY_ENCRYPTION_KEY or \
                      PRISMD_KEY_ENCRYPTION_KEY_FILE";
const WRONG_KEK: &str =
    "the key encryption key does not match the one the signing keys were sealed with";

/// Tokens are bound to the issuer, which defaults to the (new, random) listen address: a
/// restarted server keeps this one, so tokens from before the restart can verify.
const ISSUER: &str = "http://auth.keys.test";

fn with_env(env: &[(&str, &str)]) -> Options {
    Options {
        args: vec!["--issuer".into(), ISSUER.into()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Options::default()
    }
}

fn command(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("PRISMD_LOG")
        .env_remove(KEK_VAR)
        .env_remove(KEK_FILE_VAR)
        .env_remove(NEW_KEK_VAR)
        .env_remove("PRISMD_NEW_KEY_ENCRYPTION_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs an admin command with these environment variables (and no others of the KEK's).
fn admin_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Output> {
    command(data, args, env).output()
}

/// Starts `serve` expecting it to refuse: returns its stderr once it has exited with a
/// failure. A server that keeps running (or exits 0) fails the test.
fn refused_start(
    data: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String, Box<dyn std::error::Error>> {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut child = command(data, &all, env).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err(format!("prismd serve {args:?} kept running; it should refuse").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8(output.stderr)?;
    if status.success() {
        return Err(format!("prismd serve {args:?} exited 0; it should refuse:\n{stderr}").into());
    }
    Ok(stderr)
}

fn assert_no_kek_in(text: &str) {
    for secret in [KEK, KEK_HEX, OTHER_KEK, THIRD_KEK] {
        assert!(
            !text.contains(secret),
            "a key encryption key was printed:\n{text}"
        );
    }
}

/// `(kid, private_key)` of every signing key in the SQLite database.
async fn stored_keys(data: &Path) -> Result<Vec<(String, Vec<u8>)>, Box<dyn std::error::Error>> {
    let url = format!("sqlite://{}", data.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let keys = sqlx::query_as("SELECT kid, private_key FROM signing_keys ORDER BY created_at")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    Ok(keys)
}

/// A plain private key is PKCS#8 DER: a SEQUENCE (0x30). A sealed one has the versioned
/// prefix instead, and is longer by its header and tag.
fn is_sealed(private_key: &[u8]) -> bool {
    private_key.starts_with(b"pkek1") && private_key.first() != Some(&0x30)
}

#[tokio::test]
async fn sealed_keys_need_the_right_key_encryption_key() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start_with(data, with_env(&[(KEK_VAR, KEK)]))?;
    let refresh = user_with_token(data, "ada@example.com")?;
    let first = server.access_token(&refresh).await?;
    assert_eq!(server.whoami(&first).await?, Ok("ada@example.com".into()));

    // A rotation needs the key encryption key too: without it (or with another) it would
    // store a key the others cannot read, or an unencrypted one.
    for env in [vec![], vec![(KEK_VAR, OTHER_KEK)]] {
        let refused = admin_env(data, &["keys", "rotate"], &env)?;
        assert!(!refused.status.success());
        let stderr = String::from_utf8(refused.stderr)?;
        assert!(
            stderr.contains(NO_KEK) || stderr.contains(WRONG_KEK),
            "{stderr}"
        );
        assert_no_kek_in(&stderr);
    }
    let rotated = admin_env(data, &["keys", "rotate"], &[(KEK_VAR, KEK)])?;
    assert!(rotated.status.success(), "{rotated:?}");
    let new_kid = String::from_utf8(rotated.stdout)?.trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let token = server.access_token(&refresh).await?;
        if kid_of(&token)? == new_kid {
            break token;
        }
        if Instant::now() > deadline {
            return Err("the server never signed with the rotated key".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let stored = stored_keys(data).await?;
    assert_eq!(stored.len(), 2);
    for (kid, private_key) in &stored {
        assert!(is_sealed(private_key), "{kid} is stored plain");
    }
    let logs = server.stop()?;
    assert_no_kek_in(&logs);

    // Without the key encryption key, with another one, with a malformed one, or with both
    // the variable and the file: refused, with a clear message and never the key.
    let stderr = refused_start(data, &[], &[])?;
    assert!(stderr.contains(NO_KEK), "{stderr}");
    let stderr = refused_start(data, &[], &[(KEK_VAR, OTHER_KEK)])?;
    assert!(stderr.contains(WRONG_KEK), "{stderr}");
    assert_no_kek_in(&stderr);
    let malformed = "not-a-key-but-maybe-a-password";
    let stderr = refused_start(data, &[], &[(KEK_VAR, malformed)])?;
    assert!(stderr.contains("openssl rand -base64 32"), "{stderr}");
    assert!(!stderr.contains(malformed), "{stderr}");
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, format!("{KEK_HEX}\n"))?;
    let kek_path = kek_file.to_str().ok_or("path")?;
    let stderr = refused_start(data, &[], &[(KEK_VAR, KEK), (KEK_FILE_VAR, kek_path)])?;
    assert!(stderr.contains("not both"), "{stderr}");
    assert_no_kek_in(&stderr);
    let stderr = refused_start(data, &[], &[(KEK_FILE_VAR, "/nonexistent/kek")])?;
    assert!(stderr.contains("/nonexistent/kek"), "{stderr}");

    // The right key, from a file (hex, trailing newline): the old tokens verify, the
    // current key signs.
    let server = Server::start_with(data, with_env(&[(KEK_FILE_VAR, kek_path)]))?;
    assert_eq!(server.whoami(&first).await?, Ok("ada@example.com".into()));
    assert_eq!(server.whoami(&second).await?, Ok("ada@example.com".into()));
    let third = server.access_token(&refresh).await?;
    assert_eq!(kid_of(&third)?, new_kid);
    assert_eq!(server.whoami(&third).await?, Ok("ada@example.com".into()));
    let list = admin_env(data, &["keys", "list"], &[])?;
    let list = String::from_utf8(list.stdout)?;
    assert_eq!(list.matches(" encrypted ").count(), 2, "{list}");
    let logs = server.stop()?;
    assert_no_kek_in(&logs);

    // A sealed key moved to another row (here: the two keys swapped) does not open there:
    // the start is refused as damage, not as a wrong key.
    let url = format!("sqlite://{}", data.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let stored = stored_keys(data).await?;
    let swapped = stored.iter().zip(stored.iter().rev());
    for ((kid, _), (_, other_private_key)) in swapped {
        sqlx::query("UPDATE signing_keys SET private_key = $1 WHERE kid = $2")
            .bind(other_private_key)
            .bind(kid)
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    let stderr = refused_start(data, &[], &[(KEK_VAR, KEK)])?;
    assert!(
        stderr.contains(&format!("signing key {new_kid} cannot be decrypted")),
        "{stderr}"
    );
    assert_no_kek_in(&stderr);
    Ok(())
}

#[tokio::test]
async fn rewrap_moves_the_keys_to_a_new_key_encryption_key() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start_with(data, with_env(&[(KEK_VAR, KEK)]))?;
    let refresh = user_with_token(data, "ada@example.com")?;
    let before = server.access_token(&refresh).await?;
    let rotated = admin_env(data, &["keys", "rotate"], &[(KEK_VAR, KEK)])?;
    assert!(rotated.status.success(), "{rotated:?}");
    server.stop()?;
    let sealed_before = stored_keys(data).await?;
    assert_eq!(sealed_before.len(), 2);

    // Refused, changing nothing: no new key, the wrong current key, no current key, a
    // malformed new key.
    let refusals: [(&[(&str, &str)], &str); 4] = [
        (&[(KEK_VAR, KEK)], "PRISMD_NEW_KEY_ENCRYPTION_KEY"),
        (&[(KEK_VAR, OTHER_KEK), (NEW_KEK_VAR, THIRD_KEK)], WRONG_KEK),
        (&[(NEW_KEK_VAR, OTHER_KEK)], NO_KEK),
        (&[(KEK_VAR, KEK), (NEW_KEK_VAR, "short")], NEW_KEK_VAR),
    ];
    for (env, expected) in refusals {
        let output = admin_env(data, &["keys", "rewrap"], env)?;
        let stderr = String::from_utf8(output.stderr)?;
        assert!(!output.status.success(), "{env:?}: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert_no_kek_in(&stderr);
        assert_eq!(
            stored_keys(data).await?,
            sealed_before,
            "{env:?} changed the keys"
        );
    }

    let new_kek_file = dir.path().join("new-kek");
    std::fs::write(&new_kek_file, format!("{OTHER_KEK}\n"))?;
    let new_kek_path = new_kek_file.to_str().ok_or("path")?;
    let output = admin_env(
        data,
        &["keys", "rewrap"],
        &[
            (KEK_VAR, KEK),
            ("PRISMD_NEW_KEY_ENCRYPTION_KEY_FILE", new_kek_path),
        ],
    )?;
    assert!(output.status.success(), "{output:?}");
    assert_no_kek_in(&String::from_utf8(output.stderr)?);
    let rewrapped = stored_keys(data).await?;
    for ((kid, old), (same_kid, new)) in sealed_before.iter().zip(&rewrapped) {
        assert_eq!(kid, same_kid);
        assert!(is_sealed(new) && new != old, "{kid} not re-sealed");
    }
    // Running it again finds nothing left to do.
    let again = admin_env(
        data,
        &["keys", "rewrap"],
        &[(KEK_VAR, OTHER_KEK), (NEW_KEK_VAR, OTHER_KEK)],
    )?;
    assert!(again.status.success(), "{again:?}");
    assert_eq!(stored_keys(data).await?, rewrapped);
    let audit = admin_env(data, &["audit", "--limit", "5"], &[])?;
    assert_eq!(
        String::from_utf8(audit.stdout)?
            .matches("\"keys.rewrapped\"")
            .count(),
        1
    );

    let stderr = refused_start(data, &[], &[(KEK_VAR, KEK)])?;
    assert!(stderr.contains(WRONG_KEK), "{stderr}");
    let server = Server::start_with(data, with_env(&[(KEK_VAR, OTHER_KEK)]))?;
    assert_eq!(server.whoami(&before).await?, Ok("ada@example.com".into()));
    let after = server.access_token(&refresh).await?;
    assert_eq!(server.whoami(&after).await?, Ok("ada@example.com".into()));
    assert_no_kek_in(&server.stop()?);
    Ok(())
}

#[tokio::test]
async fn plain_keys_are_sealed_when_a_key_encryption_key_is_given() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start_with(data, with_env(&[]))?;
    let refresh = user_with_token(data, "ada@example.com")?;
    let before = server.access_token(&refresh).await?;
    server.stop()?;
    let plain = stored_keys(data).await?;
    assert_eq!(plain.len(), 1);
    assert_eq!(
        plain[0].1.first(),
        Some(&0x30),
        "without a KEK keys are PKCS#8"
    );

    let server = Server::start_with(data, with_env(&[(KEK_VAR, KEK)]))?;
    let sealed = stored_keys(data).await?;
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].0, plain[0].0, "the same key, now sealed");
    assert!(is_sealed(&sealed[0].1));
    assert!(
        !sealed[0]
            .1
            .windows(plain[0].1.len())
            .any(|w| w == plain[0].1.as_slice()),
        "the plain key is not inside the sealed one"
    );
    assert_eq!(server.whoami(&before).await?, Ok("ada@example.com".into()));
    let after = server.access_token(&refresh).await?;
    assert_eq!(kid_of(&after)?, kid_of(&before)?);
    let audit = admin_env(data, &["audit", "--limit", "5"], &[])?;
    let audit = String::from_utf8(audit.stdout)?;
    assert!(audit.contains("\"keys.sealed\""), "{audit}");
    assert!(audit.contains(&plain[0].0), "{audit}");
    let logs = server.stop()?;
    assert!(logs.contains("sealed the stored signing keys"), "{logs}");
    assert_no_kek_in(&logs);

    // A second start with the key seals nothing more; one without it is refused.
    let server = Server::start_with(data, with_env(&[(KEK_VAR, KEK)]))?;
    assert_eq!(server.whoami(&after).await?, Ok("ada@example.com".into()));
    assert!(!server.stop()?.contains("sealed the stored signing keys"));
    let stderr = refused_start(data, &[], &[])?;
    assert!(stderr.contains(NO_KEK), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn automatic_rotation_adds_a_key_and_keeps_the_old_one() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    // Below the floor of one hour: refused, and the message says why.
    let stderr = refused_start(data, &["--key-rotation-period", "30m"], &[])?;
    assert!(stderr.contains("--key-rotation-period"), "{stderr}");
    assert!(stderr.contains("shorter than 1h"), "{stderr}");

    let server = Server::start_with(
        data,
        Options {
            args: [
                "--key-rotation-period",
                "3s",
                "--key-rotation-period-floor",
                "1s",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            env: vec![(KEK_VAR.to_owned(), KEK.to_owned())],
            ..Options::default()
        },
    )?;
    let refresh = user_with_token(data, "ada@example.com")?;
    let first = server.access_token(&refresh).await?;
    let old_kid = kid_of(&first)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_kid = loop {
        let token = server.access_token(&refresh).await?;
        let kid = kid_of(&token)?;
        if kid != old_kid {
            assert_eq!(server.whoami(&token).await?, Ok("ada@example.com".into()));
            break kid;
        }
        if Instant::now() > deadline {
            return Err("no automatic rotation".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kids = jwks_kids(&server).await?;
    assert!(
        kids.contains(&old_kid),
        "the retired key stays in the JWKS: {kids:?}"
    );
    assert!(kids.contains(&new_kid), "{kids:?}");
    assert_eq!(server.whoami(&first).await?, Ok("ada@example.com".into()));
    let audit = admin_env(data, &["audit", "--limit", "20"], &[])?;
    let audit = String::from_utf8(audit.stdout)?;
    let rotation = audit
        .lines()
        .find(|line| line.contains("\"keys.rotated\"") && line.contains(&new_kid))
        .ok_or_else(|| format!("no keys.rotated event for {new_kid}:\n{audit}"))?;
    assert!(rotation.contains("\"system\""), "{rotation}");
    for (kid, private_key) in stored_keys(data).await? {
        assert!(is_sealed(&private_key), "{kid} is stored plain");
    }
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn replicas_rotating_automatically_make_one_key_per_period() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = rotate_on_two_replicas(&db.url).await;
    db.drop_now().await?;
    outcome
}

const PERIOD_MS: i64 = 3_000;

/// A signing key as stored, with the number of audited rotations seen in the same snapshot.
#[derive(sqlx::FromRow)]
struct ReplicaKey {
    kid: String,
    created_at: i64,
    retired_at: Option<i64>,
    private_key: Vec<u8>,
    rotations: i64,
}

async fn rotate_on_two_replicas(url: &str) -> TestResult {
    let (dir_a, dir_b) = (temp_dir()?, temp_dir()?);
    let replica = |dir: &Path| {
        Server::start_with(
            dir,
            Options {
                args: [
                    "--database-url",
                    url,
                    "--issuer",
                    "https://auth.prism.test",
                    "--key-rotation-period",
                    "3s",
                    "--key-rotation-period-floor",
                    "1s",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                env: vec![(KEK_VAR.to_owned(), KEK.to_owned())],
                ..Options::default()
            },
        )
    };
    let a = replica(dir_a.path())?;
    let b = replica(dir_b.path())?;
    let admin = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let mut all = vec!["--database-url", url];
        all.extend_from_slice(args);
        let output = admin_env(dir_a.path(), &all, &[])?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned().into());
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    };
    admin(&[
        "users",
        "add",
        "--email",
        "ada@example.com",
        "--role",
        "Integrator",
    ])?;
    let refresh = admin(&["tokens", "create", "--email", "ada@example.com"])?;
    let first = a.access_token(&refresh).await?;

    // Both replicas check the key's age several times a period; let a few periods pass.
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let keys = loop {
        // One statement, one snapshot: the keys and the rotations audited so far.
        let keys: Vec<ReplicaKey> = sqlx::query_as(
            "SELECT kid, created_at, retired_at, private_key, \
             (SELECT COUNT(*) FROM audit_events WHERE action = 'keys.rotated') AS rotations \
             FROM signing_keys ORDER BY created_at",
        )
        .fetch_all(&mut conn)
        .await?;
        if keys.len() >= 4 {
            break keys;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} keys after 90 s", keys.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    conn.close().await?;

    // One new key per period, whichever replica made it: each key was created a full period
    // after the one it replaced, and every rotation was audited once.
    for pair in keys.windows(2) {
        let (older, newer) = (&pair[0], &pair[1]);
        assert!(
            newer.created_at - older.created_at >= PERIOD_MS,
            "{} was created {} ms after {}, within one period",
            newer.kid,
            newer.created_at - older.created_at,
            older.kid
        );
        assert_eq!(
            older.retired_at,
            Some(newer.created_at),
            "retired when its successor came"
        );
    }
    let rotations = keys.first().map_or(0, |k| k.rotations);
    assert_eq!(
        rotations,
        i64::try_from(keys.len())? - 1,
        "one audit event per rotation"
    );
    assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1);
    for key in &keys {
        assert!(is_sealed(&key.private_key), "{} is stored plain", key.kid);
    }

    // Both replicas still verify the first token, and each other's new ones.
    let from_a = a.access_token(&refresh).await?;
    let from_b = b.access_token(&refresh).await?;
    for server in [&a, &b] {
        for token in [&first, &from_a, &from_b] {
            assert_eq!(server.whoami(token).await?, Ok("ada@example.com".into()));
        }
    }
    let (logs_a, logs_b) = (a.stop()?, b.stop()?);
    assert_no_kek_in(&logs_a);
    assert_no_kek_in(&logs_b);
    Ok(())
}
