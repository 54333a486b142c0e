//! Connections: one URL form for every engine, explicit timeouts, and error
//! classification (retry the link, or report the command).

use std::time::Duration;

use redis::{Client, Connection, RedisError};

/// A client for `url`; credentials never appear in the error text.
pub fn client(url: &str) -> Result<Client, String> {
    Client::open(url).map_err(|e| format!("invalid Redis URL: {}", e.kind_text()))
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

/// Errors that say the link broke or timed out: the request may be retried.
pub fn is_link_error(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_timeout() || err.is_connection_refusal()
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}
