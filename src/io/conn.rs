//! Connections: one URL form for every engine, explicit timeouts, and error
//! classification (retry the link, or report the command).

use std::time::Duration;

use redis::{Client, ClientTlsConfig, Connection, RedisError, TlsCertificates};

/// A client for `url`; credentials never appear in the error text.
///
/// `rediss://` URLs may carry redis-py's TLS query parameters, so that one URL
/// serves both engines: `ssl_ca_certs` (a PEM file of trusted roots, else the
/// system's), `ssl_certfile` + `ssl_keyfile` (a client certificate, for mTLS)
/// and `ssl_cert_reqs=none` (no verification: tests only).
pub fn client(url: &str) -> Result<Client, String> {
    let invalid = |e: redis::RedisError| format!("invalid Redis URL: {}", e.kind_text());
    let Some((url, tls)) = tls_settings(url)? else {
        return Client::open(url).map_err(invalid);
    };
    Client::build_with_tls(url.as_str(), tls).map_err(invalid)
}

/// The URL without its TLS query parameters, and the certificates they name;
/// `None` when it is not a `rediss://` URL.
fn tls_settings(url: &str) -> Result<Option<(url::Url, TlsCertificates)>, String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
    if parsed.scheme() != "rediss" {
        return Ok(None);
    }
    let (mut ca, mut cert, mut key, mut insecure) = (None, None, None, false);
    let mut kept = Vec::new();
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "ssl_ca_certs" => ca = Some(value.into_owned()),
            "ssl_certfile" => cert = Some(value.into_owned()),
            "ssl_keyfile" => key = Some(value.into_owned()),
            "ssl_cert_reqs" => insecure = value.eq_ignore_ascii_case("none"),
            _ => kept.push((name.into_owned(), value.into_owned())),
        }
    }
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("cannot read TLS file {path:?}: {e}"));
    let client_tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig { client_cert: read(&cert)?, client_key: read(&key)? }),
        (None, None) => None,
        _ => return Err("ssl_certfile and ssl_keyfile go together".into()),
    };
    let root_cert = ca.as_deref().map(read).transpose()?;
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    if insecure {
        parsed.set_fragment(Some("insecure"));
    }
    Ok(Some((parsed, TlsCertificates { client_tls, root_cert })))
}

/// A connection whose reads give up after `read_timeout` (`None`: wait forever,
/// for blocking reads).
pub fn connect(
    client: &Client,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<Connection, RedisError> {
    let con = client.get_connection_with_timeout(connect_timeout)?;
    con.set_read_timeout(read_timeout)?;
    con.set_write_timeout(Some(connect_timeout.max(Duration::from_secs(5))))?;
    Ok(con)
}

/// Errors that say the link broke or timed out, or that the server is not
/// ready yet (a restarted server loading its data answers `-LOADING`): the
/// request may be retried.
pub fn is_link_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_connection_refusal()
        || is_transient_reply(err)
}

/// A server reply that only means "not now".
pub fn is_transient_reply(err: &RedisError) -> bool {
    matches!(err.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN"))
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}
