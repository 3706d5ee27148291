//! A connection to the PostgreSQL server holding a volume's metadata.
//!
//! The core calls the metadata store synchronously, from FUSE threads and
//! from tokio workers alike. `tokio-postgres` splits a connection into a
//! client, whose requests are plain channel messages, and a connection
//! future doing the socket I/O: the future runs on a thread of its own
//! with a one-thread runtime, and callers wait for their replies with a
//! plain executor, so no call ever needs (or nests) a tokio runtime.
//!
//! TLS is required unless every host of the connection string is on this
//! machine (a loopback address, `localhost` or a Unix socket), and the
//! server's certificate is always verified: against the system's roots, or
//! against the CA file named by `sslrootcert`.

use super::super::{MetaError, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode};

/// How long a connection attempt may take unless the string says.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client whose connection is driven on its own thread.
pub struct Connection {
    pub client: tokio_postgres::Client,
}

/// The payloads of the notifications a listening connection receives.
pub type Heard = std::sync::mpsc::Sender<String>;

/// Waits for `f` on the calling thread (see the module comment).
pub fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// A parsed connection string: tokio-postgres's settings and the CA file,
/// which it does not know.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    root_cert: Option<PathBuf>,
}

impl Target {
    /// Parses a `postgresql://` URL or a `key=value` connection string. The
    /// error never repeats the string (it may hold a password).
    pub fn parse(conninfo: &str) -> Result<Target> {
        let (rest, root_cert) = take_root_cert(conninfo);
        let config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| MetaError::Config(format!("the PostgreSQL connection string is not valid: {e}")))?;
        if config.get_hosts().is_empty() {
            return Err(MetaError::Config(
                "the PostgreSQL connection string names no host".into(),
            ));
        }
        Ok(Target { config, root_cert })
    }

    /// `given` (a URL or a `key=value` string, maybe empty) completed from
    /// libpq's environment variables for what it leaves out (`PGHOST`,
    /// `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`,
    /// `PGSSLROOTCERT`; `env` looks them up), as one `key=value` string: what
    /// a volume records, so every host connects alike.
    pub fn complete(given: &str, env: impl Fn(&str) -> Option<String>) -> Result<String> {
        let (rest, root_cert) = take_root_cert(given);
        let rest = if rest.trim().is_empty() { String::new() } else { rest };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| MetaError::Config(format!("the PostgreSQL connection string is not valid: {e}")))?;
        if config.get_hosts().is_empty()
            && let Some(hosts) = env("PGHOST")
        {
            for host in hosts.split(',') {
                config.host(host);
            }
        }
        if config.get_ports().is_empty()
            && let Some(ports) = env("PGPORT")
        {
            for port in ports.split(',') {
                let port = port
                    .parse()
                    .map_err(|_| MetaError::Config(format!("PGPORT {port:?} is not a port number")))?;
                config.port(port);
            }
        }
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            pairs.push(("host", hosts.join(",")));
        }
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            pairs.push(("port", ports.join(",")));
        }
        if let Some(user) = config.get_user().map(str::to_string).or_else(|| env("PGUSER")) {
            pairs.push(("user", user));
        }
        let password = match config.get_password() {
            Some(p) => Some(
                String::from_utf8(p.to_vec())
                    .map_err(|_| MetaError::Config("the PostgreSQL password is not UTF-8".into()))?,
            ),
            None => env("PGPASSWORD"),
        };
        if let Some(password) = password {
            pairs.push(("password", password));
        }
        if let Some(db) = config.get_dbname().map(str::to_string).or_else(|| env("PGDATABASE")) {
            pairs.push(("dbname", db));
        }
        if given.contains("sslmode") {
            let mode = match config.get_ssl_mode() {
                SslMode::Disable => "disable",
                SslMode::Require => "require",
                _ => "prefer",
            };
            pairs.push(("sslmode", mode.to_string()));
        } else if let Some(mode) = env("PGSSLMODE") {
            pairs.push(("sslmode", mode));
        }
        if let Some(root) = root_cert
            .map(|p| p.display().to_string())
            .or_else(|| env("PGSSLROOTCERT"))
        {
            pairs.push(("sslrootcert", root));
        }
        if let Some(timeout) = config.get_connect_timeout() {
            pairs.push(("connect_timeout", timeout.as_secs().to_string()));
        }
        if let Some(name) = config.get_application_name() {
            pairs.push(("application_name", name.to_string()));
        }
        let conninfo = pairs
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" ");
        Target::parse(&conninfo)?;
        Ok(conninfo)
    }

    /// Whether the string sets a password (which must not be in argv).
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// Whether every host is on this machine, where TLS may be skipped.
    pub fn is_local(&self) -> bool {
        self.config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => is_loopback(name),
            Host::Unix(_) => true,
        })
    }

    /// What may be shown of the target: user, hosts, ports and database,
    /// never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match self.config.get_ports().get(i).or(self.config.get_ports().first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        format!(
            "postgresql://{}{}/{}",
            self.config.get_user().map(|u| format!("{u}@")).unwrap_or_default(),
            hosts.join(","),
            self.config.get_dbname().unwrap_or_default()
        )
    }

    /// Opens a connection; TLS as the module comment says.
    pub fn connect(&self) -> Result<Connection> {
        self.connect_hearing(None)
    }

    /// `connect`, passing the payload of each notification (LISTEN) the
    /// connection receives to `heard`.
    pub fn connect_hearing(&self, heard: Option<Heard>) -> Result<Connection> {
        let mut config = self.config.clone();
        // A server that does not answer (a dead host, a firewall) must not
        // hang the mount or a file operation for ever.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = if self.is_local() && config.get_ssl_mode() != SslMode::Require {
            None
        } else {
            config.ssl_mode(SslMode::Require);
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?))
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let describe = self.describe();
        std::thread::Builder::new()
            .name("s3vault-pg".into())
            .spawn(move || drive(config, tls, sender, heard))
            .map_err(|e| MetaError::Config(format!("cannot start the database connection thread: {e}")))?;
        let client = receiver
            .recv()
            .map_err(|_| MetaError::Config("the database connection thread stopped".into()))?
            .map_err(|e| MetaError::Unreachable(format!("{describe}: {e}")))?;
        Ok(Connection { client })
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| MetaError::Config(format!("CA file {} (sslrootcert): {e}", path.display())))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        MetaError::Config(format!("CA file {} (sslrootcert) is not PEM: {e}", path.display()))
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| MetaError::Config(format!("CA file {} (sslrootcert): {e}", path.display())))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A system root rustls cannot parse is not one we need.
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(MetaError::Config(
                "no CA certificate to verify the database server with (install ca-certificates or set sslrootcert)"
                    .into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MetaError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

type Connected = std::result::Result<tokio_postgres::Client, tokio_postgres::Error>;

/// The connection thread: connects, hands the client over, then does the
/// connection's I/O until the client is dropped or the server goes away.
fn drive(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    sender: std::sync::mpsc::SyncSender<Connected>,
    heard: Option<Heard>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the database connection runtime: {e}");
            return;
        }
    };
    match tls {
        None => runtime.block_on(serve(config, tokio_postgres::NoTls, sender, heard)),
        Some(tls) => runtime.block_on(serve(config, tls, sender, heard)),
    }
}

async fn serve<T>(
    config: tokio_postgres::Config,
    tls: T,
    sender: std::sync::mpsc::SyncSender<Connected>,
    heard: Option<Heard>,
) where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
{
    match config.connect(tls).await {
        Ok((client, mut connection)) => {
            let _ = sender.send(Ok(client));
            // Polling for messages does the connection's I/O as awaiting
            // it would, and hands over the notifications.
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if let Some(heard) = &heard {
                            let _ = heard.send(n.payload().to_string());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("metadata database connection lost: {e}");
                        break;
                    }
                    None => break,
                }
            }
        }
        Err(e) => {
            let _ = sender.send(Err(e));
        }
    }
}

/// Splits `sslrootcert=…` off a connection string (tokio-postgres refuses
/// options it does not know); the rest is returned as given.
fn take_root_cert(conninfo: &str) -> (String, Option<PathBuf>) {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let Some((base, query)) = conninfo.split_once('?') else {
            return (conninfo.to_string(), None);
        };
        let mut root = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix("sslrootcert=") {
                Some(path) => {
                    root = Some(PathBuf::from(
                        percent_encoding::percent_decode_str(path)
                            .decode_utf8_lossy()
                            .into_owned(),
                    ));
                    false
                }
                None => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, root)
    } else {
        let mut root = None;
        let kept: Vec<&str> = conninfo
            .split_whitespace()
            .filter(|pair| match pair.strip_prefix("sslrootcert=") {
                Some(path) => {
                    root = Some(PathBuf::from(path.trim_matches('\'')));
                    false
                }
                None => true,
            })
            .collect();
        (kept.join(" "), root)
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_file_is_taken_out_of_both_forms() {
        let (rest, root) =
            take_root_cert("postgresql://u:pw@db.example:5432/vault?sslmode=require&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgresql://u:pw@db.example:5432/vault?sslmode=require");
        assert_eq!(root.unwrap(), PathBuf::from("/etc/ca.pem"));
        let (rest, root) = take_root_cert("host=db.example sslrootcert=/etc/ca.pem user=u");
        assert_eq!(rest, "host=db.example user=u");
        assert_eq!(root.unwrap(), PathBuf::from("/etc/ca.pem"));
        assert_eq!(take_root_cert("postgresql://h/db").1, None);
    }

    #[test]
    fn a_connection_string_is_completed_from_the_environment() {
        let env = |name: &str| match name {
            "PGHOST" => Some("db.example".to_string()),
            "PGPORT" => Some("6432".to_string()),
            "PGPASSWORD" => Some("it's a \\ secret".to_string()),
            "PGUSER" => Some("from-env".to_string()),
            _ => None,
        };
        let conninfo = Target::complete("postgresql://alice@/vault?sslmode=require", env).unwrap();
        assert_eq!(
            conninfo,
            "host='db.example' port='6432' user='alice' password='it\\'s a \\\\ secret' dbname='vault' sslmode='require'"
        );
        let target = Target::parse(&conninfo).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"it's a \\ secret"[..]));
        assert_eq!(target.describe(), "postgresql://alice@db.example:6432/vault");
        assert!(target.has_password());
        let local = Target::complete("host=127.0.0.1 dbname=x sslrootcert=/ca.pem", |_| None).unwrap();
        assert_eq!(local, "host='127.0.0.1' dbname='x' sslrootcert='/ca.pem'");
        assert!(Target::complete("", |_| None).is_err());
        assert!(Target::complete("postgresql://u@h/d", |n| (n == "PGPORT").then(|| "x".into())).is_ok());
        assert!(Target::complete("postgresql://u@/d", |n| (n == "PGPORT").then(|| "x".into())).is_err());
    }

    #[test]
    fn only_hosts_on_this_machine_may_skip_tls() {
        assert!(Target::parse("postgresql://u@127.0.0.1:5432/db").unwrap().is_local());
        assert!(Target::parse("host=localhost dbname=x").unwrap().is_local());
        assert!(Target::parse("host=/run/postgresql dbname=x").unwrap().is_local());
        assert!(!Target::parse("postgresql://u@db.example/db").unwrap().is_local());
        assert!(!Target::parse("host=127.0.0.1,db.example dbname=x").unwrap().is_local());
    }

    #[test]
    fn the_password_is_never_shown() {
        let target = Target::parse("postgresql://alice:hunter2@127.0.0.1:5433/vault").unwrap();
        assert_eq!(target.describe(), "postgresql://alice@127.0.0.1:5433/vault");
        let err = Target::parse("postgresql://alice:hunter2@127.0.0.1:5433/vault?bogus=1")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(Target::parse("dbname=x").is_err());
    }

    #[test]
    fn a_remote_server_is_reached_over_verified_tls_only() {
        let target = Target::parse("postgresql://u@db.invalid/db?sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = target.connect().err().unwrap().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
