//! Outgoing email over SMTP (lettre): the server's `--smtp-url` / `--mail-from` settings, the
//! one kind of message prismd sends (plain text: invitations, password resets), and its
//! delivery with a time limit. The SMTP password never leaves this module: logs, errors and
//! `Debug` show the URL with it replaced by `***`.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use url::Url;

/// Longest time one message may take, connection and TLS handshake included. Mail is sent
/// while someone waits for a page, and an unreachable server must fail, not hang.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// What the URL forms look like, for error messages.
const URL_FORMS: &str = "expected smtp://[user:password@]host[:port][?tls=required|opportunistic|none] \
                         or smtps://[user:password@]host[:port]";

/// One plain-text message to one recipient.
pub struct Mail {
    /// `addr@example.com` or `Name <addr@example.com>`.
    pub to: String,
    pub subject: String,
    /// The body; may hold single-use links, so it is never logged.
    pub text: String,
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `smtp://`, `?tls=required`: STARTTLS, and no message is sent when the server does not
    /// offer it or the certificate does not verify.
    StartTls,
    /// `?tls=opportunistic`: STARTTLS when the server offers it, plain text otherwise (and an
    /// attacker on the path can make it "not offer" it).
    Opportunistic,
    /// `?tls=none`: plain text; for a relay on this machine.
    None,
    /// `smtps://`: TLS from the first byte (port 465).
    Implicit,
}

impl TlsMode {
    fn describe(self) -> &'static str {
        match self {
            TlsMode::StartTls => "STARTTLS required",
            TlsMode::Opportunistic => "STARTTLS if offered",
            TlsMode::None => "no TLS",
            TlsMode::Implicit => "implicit TLS",
        }
    }
}

/// Why mail could not be set up or sent. No variant carries the SMTP password or a body.
#[derive(thiserror::Error, Debug)]
pub enum MailError {
    #[error("--smtp-url (PRISMD_SMTP_URL) is not usable: {0}")]
    Url(String),
    #[error(
        "--mail-from (PRISMD_MAIL_FROM) {value:?} is not an email address ({reason}); give \
         `auth@example.com` or `Prism Auth <auth@example.com>`"
    )]
    From { value: String, reason: String },
    #[error("--smtp-ca-file (PRISMD_SMTP_CA_FILE) {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// The address itself is left out: errors end up in logs.
    #[error("the recipient is not a valid email address ({0})")]
    Recipient(String),
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("SMTP server {server}: {reason}")]
    Send { server: String, reason: String },
    #[error(
        "SMTP server {server} did not take the message within {} (is it reachable from here, \
         and is the port and TLS mode right?)",
        humantime::format_duration(*after)
    )]
    Timeout { server: String, after: Duration },
}

/// Sends [`Mail`] through one SMTP server, from one sender. A connection per message: prismd
/// sends few, and a pooled connection would only go stale between them.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The URL as given, password replaced by `***`.
    shown_url: String,
    /// `host:port`, for messages.
    server: String,
    tls: TlsMode,
    /// Kept only to scrub it from the text of errors, should a server ever echo it back.
    password: Option<String>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("smtp_url", &self.shown_url)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// What the URL says, before a transport is built from it.
struct SmtpUrl {
    host: String,
    port: u16,
    tls: TlsMode,
    credentials: Option<(String, String)>,
    hello_name: Option<String>,
    shown: String,
}

fn parse_url(input: &str) -> Result<SmtpUrl, MailError> {
    let bad = |reason: String| MailError::Url(format!("{reason}; {URL_FORMS}"));
    // url's error texts ("invalid port number", ...) never quote the input.
    let url = Url::parse(input.trim()).map_err(|err| bad(format!("not a URL ({err})")))?;
    // Until the URL is known to have the `scheme://user:password@host` shape, the password
    // could be anywhere in it: nothing of it is quoted.
    if !matches!(url.scheme(), "smtp" | "smtps") {
        return Err(bad(format!("the scheme is `{}`", url.scheme())));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot have a password, and this one has one.
        let _ = shown.set_password(Some("***"));
    }
    let shown = shown.to_string();
    let in_url = |reason: &str| bad(format!("{reason} in {shown}"));

    let host = match url.host() {
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(in_url("no host")),
    };
    let mut tls_param = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "tls" if tls_param.is_none() => tls_param = Some(value.into_owned()),
            "tls" => return Err(in_url("`tls` given twice")),
            other => return Err(in_url(&format!("unknown parameter `{other}`"))),
        }
    }
    let tls = match (url.scheme(), tls_param.as_deref()) {
        ("smtp", None | Some("required")) => TlsMode::StartTls,
        ("smtp", Some("opportunistic")) => TlsMode::Opportunistic,
        ("smtp", Some("none")) => TlsMode::None,
        ("smtp", Some(other)) => {
            return Err(in_url(&format!(
                "`tls={other}` is not one of required, opportunistic, none"
            )));
        }
        ("smtps", None) => TlsMode::Implicit,
        ("smtps", Some(_)) => {
            return Err(in_url(
                "smtps:// is TLS from the first byte and takes no `tls` parameter",
            ));
        }
        (other, _) => return Err(bad(format!("the scheme is `{other}`"))),
    };
    let port = url.port().unwrap_or(match tls {
        TlsMode::Implicit => 465,
        TlsMode::None => 25,
        TlsMode::StartTls | TlsMode::Opportunistic => 587,
    });
    let decode = |part: &str, what: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| in_url(&format!("the {what} is not UTF-8 once %-decoded")))
    };
    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        ("", Some(_)) => return Err(in_url("a password without a user name")),
        (_, None) => {
            return Err(in_url(
                "a user name without a password (write user:password@host)",
            ));
        }
        (user, Some(password)) => Some((decode(user, "user name")?, decode(password, "password")?)),
    };
    let hello_name = match url.path().trim_matches('/') {
        "" => None,
        name => Some(name.to_owned()),
    };
    Ok(SmtpUrl {
        host,
        port,
        tls,
        credentials,
        hello_name,
        shown,
    })
}

/// Whether mail to `host` stays on this machine, where plain text is no exposure.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

impl Mailer {
    /// Checks both settings and prepares the transport; connects to nothing yet.
    pub fn new(smtp_url: &str, from: &str) -> Result<Self, MailError> {
        Self::with_ca_file(smtp_url, from, None)
    }

    /// [`Mailer::new`], also trusting the PEM certificates in `ca_file` (besides the public
    /// web CAs) for the server's certificate.
    pub fn with_ca_file(
        smtp_url: &str,
        from: &str,
        ca_file: Option<&Path>,
    ) -> Result<Self, MailError> {
        let url = parse_url(smtp_url)?;
        let from_box: Mailbox = from.trim().parse().map_err(|err| MailError::From {
            value: from.to_owned(),
            reason: format!("{err}"),
        })?;
        let extra_roots = match ca_file {
            None => None,
            Some(path) => {
                let ca_error = |reason: String| MailError::CaFile {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|err| ca_error(err.to_string()))?;
                if !pem
                    .windows(b"-----BEGIN CERTIFICATE-----".len())
                    .any(|w| w == b"-----BEGIN CERTIFICATE-----")
                {
                    return Err(ca_error("holds no PEM certificate".into()));
                }
                Some(Certificate::from_pem(&pem).map_err(|err| ca_error(err.to_string()))?)
            }
        };
        let tls_parameters = || {
            let mut builder = TlsParameters::builder(url.host.clone());
            if let Some(roots) = &extra_roots {
                builder = builder.add_root_certificate(roots.clone());
            }
            builder
                .build_rustls()
                .map_err(|err| MailError::Url(format!("TLS set-up failed: {err}")))
        };
        let tls = match url.tls {
            TlsMode::StartTls => Tls::Required(tls_parameters()?),
            TlsMode::Opportunistic => Tls::Opportunistic(tls_parameters()?),
            TlsMode::Implicit => Tls::Wrapper(tls_parameters()?),
            TlsMode::None => Tls::None,
        };
        // `builder_dangerous` only means "no TLS settings applied yet": `tls` sets them.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&url.host)
            .port(url.port)
            .tls(tls)
            .timeout(Some(SEND_TIMEOUT));
        if let Some(name) = url.hello_name {
            builder = builder.hello_name(ClientId::Domain(name));
        }
        let password = url.credentials.as_ref().map(|(_, p)| p.clone());
        if let Some((user, password)) = url.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        let mailer = Self {
            transport: builder.build(),
            from: from_box,
            shown_url: url.shown,
            server: format!("{}:{}", url.host, url.port),
            tls: url.tls,
            password,
        };
        if matches!(url.tls, TlsMode::None | TlsMode::Opportunistic) && !is_loopback(&url.host) {
            tracing::warn!(
                smtp = %mailer.shown_url,
                "email to {} may travel unencrypted ({}): the single-use links in it can be \
                 read on the way; use smtp:// (STARTTLS required) or smtps://",
                mailer.server,
                url.tls.describe()
            );
        }
        Ok(mailer)
    }

    /// The URL with the password replaced by `***`.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// The sender, as it appears in the From header.
    pub fn from(&self) -> String {
        self.from.to_string()
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    /// Sends `mail`, giving up after [`SEND_TIMEOUT`]. Logs the outcome with the recipient's
    /// domain only: an address is personal data and logs are kept long; the caller's audit
    /// event says who.
    pub async fn send(&self, mail: Mail) -> Result<(), MailError> {
        let to: Mailbox = mail
            .to
            .trim()
            .parse()
            .map_err(|err| MailError::Recipient(format!("{err}")))?;
        let domain = to.email.domain().to_owned();
        let outcome = match self.message(to, &mail.subject, mail.text) {
            Ok(message) => self.deliver(message).await,
            Err(err) => Err(err),
        };
        match &outcome {
            Ok(()) => {
                tracing::info!(recipient_domain = %domain, server = %self.server, "mail sent")
            }
            Err(err) => {
                tracing::warn!(recipient_domain = %domain, error = %err, "mail not sent");
            }
        }
        outcome
    }

    fn message(&self, to: Mailbox, subject: &str, text: String) -> Result<Message, MailError> {
        // A line break in the subject (an organization's name, say) must not start a header
        // of its own.
        let subject: String = subject
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        // The Message-ID names the sender's domain rather than this machine's host name.
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), self.from.email.domain());
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.trim())
            .message_id(Some(message_id))
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|err| MailError::Message(err.to_string()))
    }

    async fn deliver(&self, message: Message) -> Result<(), MailError> {
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(err)) => Err(MailError::Send {
                server: format!("{} ({})", self.server, self.tls.describe()),
                reason: self.scrub(err.to_string()),
            }),
            Err(_) => Err(MailError::Timeout {
                server: self.server.clone(),
                after: SEND_TIMEOUT,
            }),
        }
    }

    /// `text` without the password, in case a server quoted it back.
    fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(password) if !password.is_empty() && text.contains(password.as_str()) => {
                text.replace(password.as_str(), "***")
            }
            _ => text,
        }
    }
}

/// The mail with a link where a person new here sets their first password (which confirms
/// the address).
pub fn invitation(to: &str, org_name: &str, link: &str) -> Mail {
    Mail {
        to: to.to_owned(),
        subject: format!("You are invited to {org_name}"),
        text: format!(
            "You were added to the organization {org_name}.\n\n\
             Set your password here (the link works once, for 7 days):\n{link}\n\n\
             If you did not expect this, ignore this mail: nothing happens without the link.\n"
        ),
    }
}

/// The mail telling a person who signs in already that an organization offered them a
/// membership, which they accept after signing in.
pub fn membership_offer(to: &str, org_name: &str, issuer: &str) -> Mail {
    Mail {
        to: to.to_owned(),
        subject: format!("{org_name} invited you to join"),
        text: format!(
            "The organization {org_name} added you as a member.\n\n\
             Sign in as usual (for example with 'prism login' against {issuer}); the sign-in \
             page lets you join {org_name}. Your password stays as it is.\n"
        ),
    }
}

/// The mail telling a token's owner that it stops working soon (`expires_at`: ms).
pub fn token_expiring(
    to: &str,
    org_name: &str,
    token_name: &str,
    principal: &str,
    expires_at: i64,
) -> Mail {
    let when = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(expires_at).unwrap_or(0));
    let when = humantime::format_rfc3339_seconds(when);
    Mail {
        to: to.to_owned(),
        subject: format!("The token {token_name} expires on {when}"),
        text: format!(
            "The token \"{token_name}\" of {principal} in {org_name} stops working at {when}.\n\n\
             If something still uses it, mint a new one before then (for example with \
             'prism me:tokens:create') and replace it; then revoke the old one.\n"
        ),
    }
}

/// The mail with a single-use link to set a new password (it also confirms the address).
pub fn password_reset(to: &str, link: &str) -> Mail {
    Mail {
        to: to.to_owned(),
        subject: "Set a new password".to_owned(),
        text: format!(
            "Someone asked to reset the password that signs in as this address.\n\n\
             Set a new one here (the link works once, for one hour):\n{link}\n\n\
             If it was not you, ignore this mail: your password stays as it is.\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "Prism Auth <auth@example.org>";

    fn parsed(input: &str) -> Result<(String, u16, TlsMode), MailError> {
        parse_url(input).map(|url| (url.host, url.port, url.tls))
    }

    #[test]
    fn url_forms_pick_port_and_tls_mode() -> Result<(), MailError> {
        let cases = [
            ("smtp://mail.example.com", 587, TlsMode::StartTls),
            (
                "smtp://mail.example.com?tls=required",
                587,
                TlsMode::StartTls,
            ),
            ("smtp://mail.example.com:2525", 2525, TlsMode::StartTls),
            (
                "smtp://mail.example.com?tls=opportunistic",
                587,
                TlsMode::Opportunistic,
            ),
            ("smtp://mail.example.com?tls=none", 25, TlsMode::None),
            ("smtps://mail.example.com", 465, TlsMode::Implicit),
            ("smtps://mail.example.com:4650", 4650, TlsMode::Implicit),
        ];
        for (input, port, tls) in cases {
            assert_eq!(
                parsed(input)?,
                ("mail.example.com".to_owned(), port, tls),
                "{input}"
            );
        }
        assert_eq!(parsed("smtp://[::1]:25?tls=none")?.0, "::1");
        assert_eq!(parse_url("smtp://mail.example.com")?.hello_name, None);
        assert_eq!(
            parse_url("smtp://mail.example.com/mx1.example.org")?.hello_name,
            Some("mx1.example.org".to_owned())
        );
        Ok(())
    }

    #[test]
    fn credentials_are_percent_decoded_and_both_needed() -> Result<(), MailError> {
        let url = parse_url("smtp://me%40example.com:p%40ss%3Aw@mail.example.com")?;
        assert_eq!(
            url.credentials,
            Some(("me@example.com".to_owned(), "p@ss:w".to_owned()))
        );
        assert!(parse_url("smtp://me@mail.example.com").is_err());
        assert!(parse_url("smtp://:secret@mail.example.com").is_err());
        Ok(())
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for input in [
            "http://user:hunter2@mail.example.com",
            "smtp://user:hunter2@mail.example.com?tls=maybe",
            "smtp://user:hunter2@mail.example.com?tsl=none",
            "smtps://user:hunter2@mail.example.com?tls=none",
            "smtp://user:hunter2@mail.example.com:99999",
            "smtp://user:hunter2@",
            "user:hunter2@mail.example.com",
            "smtp:user:hunter2@mail.example.com",
            "smtp:///user:hunter2@mail.example.com",
        ] {
            let refused = Mailer::new(input, FROM).err();
            assert!(refused.is_some(), "{input} was accepted");
            let text = refused.map(|err| err.to_string()).unwrap_or_default();
            assert!(!text.contains("hunter2"), "{input}: {text}");
            assert!(text.contains("--smtp-url"), "{input}: {text}");
        }
    }

    #[test]
    fn debug_and_shown_url_hide_the_password() -> Result<(), MailError> {
        let mailer = Mailer::new("smtp://user:hunter2@mail.example.com:2525", FROM)?;
        let debug = format!("{mailer:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("user:***@mail.example.com:2525"), "{debug}");
        assert_eq!(mailer.shown_url(), "smtp://user:***@mail.example.com:2525");
        assert_eq!(
            mailer.scrub("535 bad credentials hunter2".into()),
            "535 bad credentials ***"
        );
        Ok(())
    }

    #[test]
    fn the_sender_must_be_an_address() {
        for from in ["", "nobody", "Name <>", "a@b@c"] {
            assert!(
                matches!(
                    Mailer::new("smtp://mail.example.com", from),
                    Err(MailError::From { .. })
                ),
                "{from:?}"
            );
        }
    }

    #[test]
    fn a_line_break_in_the_subject_starts_no_header() -> Result<(), MailError> {
        let mailer = Mailer::new("smtp://127.0.0.1?tls=none", FROM)?;
        let to: Mailbox = "a@example.com"
            .parse()
            .map_err(|e| MailError::Recipient(format!("{e}")))?;
        let message = mailer.message(
            to,
            "Welcome\r\nBcc: evil@example.net",
            "line one\nline two".into(),
        )?;
        let text = String::from_utf8_lossy(&message.formatted()).into_owned();
        assert!(!text.lines().any(|line| line.starts_with("Bcc:")), "{text}");
        assert!(text.contains("Message-ID: <"), "{text}");
        assert!(text.contains("@example.org>"), "{text}");
        Ok(())
    }
}
