//! Connections: one URL form for every engine, explicit timeouts, and error
//! classification (retry the link, or report the command).

use std::sync::Mutex;
use std::time::Duration;

use redis::cluster::{cluster_pipe, ClusterClient, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Client, ClientTlsConfig, Cmd, Connection, ConnectionLike, RedisError, RedisResult, TlsCertificates, Value};

/// Where Redis is: one server, or a cluster reached through its nodes.
pub enum Target {
    Single(Client),
    Cluster(ClusterTarget),
}

/// A cluster's seed URL (TLS parameters taken out) and every node seen since:
/// a reconnect after a failover must not depend on the seed being alive.
pub struct ClusterTarget {
    url: url::Url,
    certs: Option<TlsCertificates>,
    nodes: Mutex<Vec<String>>,
}

impl Target {
    pub fn new(url: &str, cluster: bool) -> Result<Target, String> {
        if !cluster {
            return client(url).map(Target::Single);
        }
        let (parsed, certs) = match tls_settings(url)? {
            Some((parsed, certs)) => (parsed, Some(certs)),
            None => (url::Url::parse(url).map_err(|e| format!("invalid Redis URL: {e}"))?, None),
        };
        if parsed.scheme() == "unix" {
            return Err("a Redis Cluster is reached over TCP: unix:// URLs cannot name its nodes".into());
        }
        let seed = format!("{}:{}", parsed.host_str().unwrap_or("127.0.0.1"), parsed.port().unwrap_or(6379));
        let target = ClusterTarget { url: parsed, certs, nodes: Mutex::new(vec![seed]) };
        target.node_client(None).map_err(|e| format!("invalid Redis URL: {}", e.kind_text()))?;
        Ok(Target::Cluster(target))
    }

    /// The query connection: one server, or the cluster client's set of node
    /// connections that follows MOVED and ASK by itself.
    pub fn connect(&self, connect_timeout: Duration, read_timeout: Option<Duration>) -> RedisResult<Link> {
        match self {
            Target::Single(client) => connect(client, connect_timeout, read_timeout).map(Link::Single),
            Target::Cluster(cluster) => cluster.connect(connect_timeout, read_timeout).map(Link::Cluster),
        }
    }

    /// A connection to one server, for blocking reads: the single server, or
    /// the cluster node `node` (`host:port`), else the `attempt`-th known node
    /// (which redirects to the owner). Returns the node it reached.
    pub fn connect_node(
        &self,
        node: Option<&str>,
        attempt: usize,
        connect_timeout: Duration,
        read_timeout: Option<Duration>,
    ) -> RedisResult<(Connection, Option<String>)> {
        match self {
            Target::Single(client) => Ok((connect(client, connect_timeout, read_timeout)?, None)),
            Target::Cluster(cluster) => {
                let node = match node {
                    Some(node) => node.to_owned(),
                    None => {
                        let nodes = cluster.nodes.lock().unwrap_or_else(|p| p.into_inner());
                        nodes[attempt % nodes.len()].clone()
                    }
                };
                Ok((connect(&cluster.node_client(Some(&node))?, connect_timeout, read_timeout)?, Some(node)))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

impl ClusterTarget {
    fn node_url(&self, node: &str) -> RedisResult<url::Url> {
        let bad = |_| RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid cluster node address"));
        let (host, port) = node.rsplit_once(':').ok_or_else(|| bad(()))?;
        let mut url = self.url.clone();
        url.set_host(Some(host.trim_start_matches('[').trim_end_matches(']'))).map_err(|_| bad(()))?;
        url.set_port(Some(port.parse().map_err(|_| bad(()))?)).map_err(|_| bad(()))?;
        Ok(url)
    }

    fn node_client(&self, node: Option<&str>) -> RedisResult<Client> {
        let first = self.nodes.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
        let url = self.node_url(node.unwrap_or(&first))?;
        match &self.certs {
            Some(certs) => Client::build_with_tls(url.as_str(), certs.clone()),
            None => Client::open(url.as_str()),
        }
    }

    fn connect(&self, connect_timeout: Duration, read_timeout: Option<Duration>) -> RedisResult<ClusterConnection> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let urls = nodes.iter().map(|n| self.node_url(n).map(String::from)).collect::<RedisResult<Vec<_>>>()?;
        let mut builder = ClusterClient::builder(urls).connection_timeout(connect_timeout);
        if let Some(read_timeout) = read_timeout {
            builder = builder.response_timeout(read_timeout);
        }
        if let Some(certs) = &self.certs {
            builder = builder.certs(certs.clone());
        }
        let mut con = builder.build()?.get_connection()?;
        con.set_write_timeout(Some(connect_timeout.max(Duration::from_secs(5))))?;
        self.learn_nodes(&mut con)?;
        Ok(con)
    }

    /// Remembers every node of the slot map (masters and replicas), the seed first.
    fn learn_nodes(&self, con: &mut ClusterConnection) -> RedisResult<()> {
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(con)?;
        let mut seen = vec![self.nodes.lock().unwrap_or_else(|p| p.into_inner())[0].clone()];
        for range in array(&reply) {
            for node in array(range).iter().skip(2) {
                if let [host, Value::Int(port), ..] = array(node) {
                    let host = text(host).filter(|h| !h.is_empty()).unwrap_or_else(|| "127.0.0.1".into());
                    let addr = format!("{host}:{port}");
                    if !seen.contains(&addr) {
                        seen.push(addr);
                    }
                }
            }
        }
        *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(())
    }
}

fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// An open query connection of either kind; commands route the same way.
pub enum Link {
    Single(Connection),
    Cluster(ClusterConnection),
}

impl Link {
    /// Sends `cmds` in as few round trips as the kind allows: one pipeline, or
    /// one per cluster node. Each reply is its own result. A cluster pipeline
    /// fails as a whole on any error reply (ASK mid-migration included), so
    /// then each command goes again on its own, following redirections: the
    /// callers' commands are safe to repeat.
    pub fn pipeline(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<RedisResult<Value>>> {
        match self {
            Link::Single(con) => {
                let mut pipe = redis::Pipeline::with_capacity(cmds.len());
                pipe.ignore_errors();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(con)
            }
            Link::Cluster(con) => {
                let mut pipe = cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                match pipe.query::<Vec<Value>>(con) {
                    Ok(replies) => Ok(replies.into_iter().map(Ok).collect()),
                    Err(err) if is_link_error(&err) => Err(err),
                    Err(_) => {
                        let each: Vec<RedisResult<Value>> = pipe.cmd_iter().map(|cmd| con.req_command(cmd)).collect();
                        match each.iter().find(|r| matches!(r, Err(e) if is_link_error(e))) {
                            Some(Err(err)) => Err(err.clone()),
                            _ => Ok(each),
                        }
                    }
                }
            }
        }
    }

    /// `WAIT` on the connection that wrote `keys` (on a cluster, each slot's
    /// master connection): the fewest replicas any acknowledged.
    pub fn wait_replicas(&mut self, keys: &[&str], replicas: u64, timeout_ms: u64) -> RedisResult<u64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        match self {
            Link::Single(con) => wait.query(con),
            Link::Cluster(con) => {
                let mut routes: Vec<Route> = keys.iter().map(|k| Route::with_key(k, SlotAddr::Master)).collect();
                routes.sort_by_key(|r| format!("{r:?}"));
                routes.dedup();
                let mut fewest = replicas;
                for route in routes {
                    let reply = con.route_command(&wait, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))?;
                    fewest = fewest.min(redis::FromRedisValue::from_redis_value(reply)?);
                }
                Ok(fewest)
            }
        }
    }

    /// `cmd` on the node at `node` (`host:port`); any command on one server.
    pub fn on_node(&mut self, cmd: &Cmd, node: Option<&str>) -> RedisResult<Value> {
        match (self, node.and_then(|n| n.rsplit_once(':'))) {
            (Link::Cluster(con), Some((host, port))) => {
                let port = port.parse().map_err(|_| RedisError::from((redis::ErrorKind::Client, "bad node address")))?;
                let route = SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port };
                con.route_command(cmd, RoutingInfo::SingleNode(route))
            }
            (link, _) => cmd.query(link),
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Link::Single(c) => c.check_connection(),
            Link::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Link::Single(c) => c.is_open(),
            Link::Cluster(c) => c.is_open(),
        }
    }
}

/// The hash tag of `key` (what a cluster hashes to pick its slot), else the key:
/// keys with the same group share a slot, so one multi-key command may cover them.
pub fn slot_group(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

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
        || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || is_transient_reply(err)
}

/// A server reply that only means "not now" (`OOM`: at `maxmemory` with
/// `noeviction`, writes are refused until memory frees up; nothing of the
/// refused script was stored, so it is retried like the rest).
pub fn is_transient_reply(err: &RedisError) -> bool {
    matches!(err.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY" | "OOM"))
}

/// A cluster redirection (`MOVED`/`ASK`): the slot lives, or is moving, elsewhere.
pub fn redirect(err: &RedisError) -> Option<(bool, String)> {
    let (node, _slot) = err.redirect_node()?;
    Some((err.code() == Some("MOVED"), node.to_owned()))
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}
