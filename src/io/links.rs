//! Connections: one URL form for every engine, explicit timeouts, and error
//! classification (retry the link, or report the command).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use thiserror::Error;

use redis::cluster::{cluster_pipe, ClusterClient, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::{
    Client, ClientTlsConfig, Cmd, Connection, ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo,
    ProtocolVersion, RedisConnectionInfo, RedisError, RedisResult, TlsCertificates, Value,
};

/// Why a URL names no Redis the engines can reach. No variant quotes any
/// part of the URL (it may hold a password).
#[derive(Clone, Debug, Error)]
pub enum TargetError {
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    #[error("unsupported Redis URL scheme (expected redis://, rediss:// or unix://)")]
    UnsupportedScheme,
    #[error("a Redis Cluster is reached over TCP: unix:// URLs cannot name its nodes")]
    ClusterOverUnix,
    /// A setting the cluster client cannot honour (it connects to nodes
    /// itself: no hook to name them or to relax the hostname check on each).
    #[error("{0} is not supported on a Redis Cluster by the Rust engine (backend='python' honours it)")]
    NotOnCluster(&'static str),
    #[error("cannot read TLS file {path:?}: {reason}")]
    TlsFile { path: String, reason: String },
    #[error("ssl_certfile and ssl_keyfile go together")]
    TlsPair,
}

/// Where Redis is: one server, or a cluster reached through its nodes.
pub enum Target {
    Single(Endpoint),
    Cluster(ClusterTarget),
}

/// A cluster's seed (its address, credentials and TLS settings, which every
/// node shares) and every node seen since: a reconnect after a failover must
/// not depend on the seed being alive.
pub struct ClusterTarget {
    seed: Endpoint,
    nodes: Mutex<Vec<String>>,
    /// The slot map as last read: `(first slot, last slot, primary)`.
    slots: Mutex<Vec<(u16, u16, String)>>,
}

impl Target {
    pub fn new(url: &str, cluster: bool) -> Result<Target, TargetError> {
        let endpoint = Endpoint::parse(url)?;
        if !cluster {
            return Ok(Target::Single(endpoint));
        }
        let (ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. }) = endpoint.info.addr() else {
            return Err(TargetError::ClusterOverUnix);
        };
        if endpoint.client_name.is_some() {
            return Err(TargetError::NotOnCluster("client_name"));
        }
        if endpoint.accept_invalid_hostnames {
            return Err(TargetError::NotOnCluster("ssl_check_hostname=false"));
        }
        let seed = format!("{host}:{port}");
        let target = ClusterTarget { seed: endpoint, nodes: Mutex::new(vec![seed]), slots: Mutex::new(Vec::new()) };
        target.node_client(None, None).map_err(|e| TargetError::InvalidUrl(e.kind_text()))?;
        Ok(Target::Cluster(target))
    }

    /// The query connection: one server, or the cluster client's set of node
    /// connections that follows MOVED and ASK by itself.
    pub fn connect(&self, connect_timeout: Duration, read_timeout: Option<Duration>) -> RedisResult<Link> {
        match self {
            Target::Single(endpoint) => endpoint.connect(None, connect_timeout, read_timeout).map(Link::Single),
            Target::Cluster(cluster) => {
                cluster.connect(connect_timeout, read_timeout).map(|c| Link::Cluster(Box::new(c)))
            }
        }
    }

    /// A connection to one server, for blocking reads and listening: the
    /// single server, or the cluster node `node` (`host:port`), else the
    /// `attempt`-th known node (which redirects to the owner); speaking
    /// `protocol` (`None`: the URL's). Returns the node it reached.
    pub fn connect_node(
        &self,
        node: Option<&str>,
        attempt: usize,
        protocol: Option<ProtocolVersion>,
        connect_timeout: Duration,
        read_timeout: Option<Duration>,
    ) -> RedisResult<(Connection, Option<String>)> {
        match self {
            Target::Single(endpoint) => Ok((endpoint.connect(protocol, connect_timeout, read_timeout)?, None)),
            Target::Cluster(cluster) => {
                let node = match node {
                    Some(node) => node.to_owned(),
                    None => {
                        let nodes = cluster.nodes.lock().unwrap_or_else(|p| p.into_inner());
                        nodes[attempt % nodes.len()].clone()
                    }
                };
                let client = cluster.node_client(Some(&node), protocol)?;
                Ok((connect(&client, connect_timeout, read_timeout)?, Some(node)))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// The node owning `key`'s slot as last read ('' on one server; `None`:
    /// no node owns it in the map, e.g. mid-failover).
    pub fn owner(&self, key: &str) -> Option<String> {
        match self {
            Target::Single(_) => Some(String::new()),
            Target::Cluster(cluster) => cluster.owner(key),
        }
    }

    /// Reads the cluster's slot map again (after a MOVED seen outside the
    /// cluster connection, or a node lost); nothing to do on one server.
    pub fn refresh_slots(&self, connect_timeout: Duration) -> RedisResult<()> {
        match self {
            Target::Single(_) => Ok(()),
            Target::Cluster(cluster) => cluster.refresh_slots(connect_timeout),
        }
    }
}

/// A key's cluster slot: CRC16 (XMODEM) of its hash tag, else of the key, mod 16384.
pub fn key_slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(slot_group(key).as_bytes()) % 16384
}

impl ClusterTarget {
    /// The seed's settings at the node `node` (`host:port`).
    fn node_info(&self, node: &str) -> RedisResult<ConnectionInfo> {
        let bad = || RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid cluster node address"));
        let (host, port) = node.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = port.parse().map_err(|_| bad())?;
        let addr = match self.seed.info.addr() {
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
            }
            _ => ConnectionAddr::Tcp(host, port),
        };
        Ok(self.seed.info.clone().set_addr(addr))
    }

    fn node_client(&self, node: Option<&str>, protocol: Option<ProtocolVersion>) -> RedisResult<Client> {
        let first = self.nodes.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
        client(&speaking(self.node_info(node.unwrap_or(&first))?, protocol), self.seed.certs.as_ref(), false)
    }

    fn connect(&self, connect_timeout: Duration, read_timeout: Option<Duration>) -> RedisResult<ClusterConnection> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let infos = nodes.iter().map(|n| self.node_info(n)).collect::<RedisResult<Vec<_>>>()?;
        let mut builder = ClusterClient::builder(infos).connection_timeout(connect_timeout).tcp_settings(keepalive());
        if let Some(read_timeout) = read_timeout {
            builder = builder.response_timeout(read_timeout);
        }
        if let Some(certs) = &self.seed.certs {
            builder = builder.certs(certs.clone());
        }
        let mut con = builder.build()?.get_connection()?;
        con.set_write_timeout(Some(connect_timeout.max(Duration::from_secs(5))))?;
        self.learn_nodes(&mut con)?;
        Ok(con)
    }

    /// Remembers every node of the slot map (masters and replicas), the seed
    /// first, and which primary owns which slots.
    fn learn_nodes(&self, con: &mut dyn ConnectionLike) -> RedisResult<()> {
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(con)?;
        let mut seen = vec![self.nodes.lock().unwrap_or_else(|p| p.into_inner())[0].clone()];
        let mut slots = Vec::new();
        for range in array(&reply) {
            let bounds = match array(range) {
                [Value::Int(first), Value::Int(last), ..] => u16::try_from(*first).ok().zip(u16::try_from(*last).ok()),
                _ => None,
            };
            for (i, node) in array(range).iter().skip(2).enumerate() {
                if let [host, Value::Int(port), ..] = array(node) {
                    let host = text(host).filter(|h| !h.is_empty()).unwrap_or_else(|| "127.0.0.1".into());
                    let addr = format!("{host}:{port}");
                    if let (0, Some((first, last))) = (i, bounds) {
                        slots.push((first, last, addr.clone()));
                    }
                    if !seen.contains(&addr) {
                        seen.push(addr);
                    }
                }
            }
        }
        *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        *self.slots.lock().unwrap_or_else(|p| p.into_inner()) = slots;
        Ok(())
    }

    /// Reads the slot map again from the first known node that answers.
    fn refresh_slots(&self, connect_timeout: Duration) -> RedisResult<()> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut last = None;
        for node in &nodes {
            let tried = self
                .node_client(Some(node), None)
                .and_then(|c| connect(&c, connect_timeout, Some(connect_timeout)))
                .and_then(|mut con| self.learn_nodes(&mut con));
            match tried {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Client, "no cluster node known"))))
    }

    /// The primary owning `key`'s slot, as the slot map last read has it.
    fn owner(&self, key: &str) -> Option<String> {
        let slot = key_slot(key);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().find(|(first, last, _)| (*first..=*last).contains(&slot)).map(|(_, _, node)| node.clone())
    }
}

fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// An open query connection of either kind; commands route the same way.
pub enum Link {
    Single(Connection),
    /// Boxed: a cluster connection is several times the size of a single one.
    Cluster(Box<ClusterConnection>),
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
                    let reply =
                        con.route_command(&wait, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))?;
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
                let port =
                    port.parse().map_err(|_| RedisError::from((redis::ErrorKind::Client, "bad node address")))?;
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

/// One server as a URL names it: address, db, credentials and keepalive
/// (`info`), TLS files, and what `info` cannot hold.
///
/// The URL is the canonical form `python/sse_redis/connection.py` makes of any
/// URL or redis-py client, which redis-py reads the same way:
/// `redis[s]://[user[:password]@]host[:port][/db]` or
/// `unix://[user[:password]@]/path?db=N`, credentials percent-encoded; query
/// parameters `ssl_ca_certs` (a PEM file of trusted roots, else the system's),
/// `ssl_certfile` + `ssl_keyfile` (a client certificate, for mTLS),
/// `ssl_cert_reqs=none` (no verification: tests only), `ssl_check_hostname=false`,
/// `client_name`. The other forms redis-py accepts are read too (`?username=`,
/// `?password=`, `?db=`), so a URL given to `_core` directly works as well.
/// No error text quotes any part of the URL.
pub struct Endpoint {
    client: Client,
    info: ConnectionInfo,
    certs: Option<TlsCertificates>,
    accept_invalid_hostnames: bool,
    client_name: Option<String>,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, TargetError> {
        let invalid = |why: &str| TargetError::InvalidUrl(why.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let (netloc_user, netloc_password, path, query) = match scheme.as_str() {
            "redis" | "rediss" => {
                let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
                let user = Some(parsed.username()).filter(|u| !u.is_empty()).map(decode).transpose()?;
                let password = parsed.password().map(decode).transpose()?;
                (user, password, parsed.path().to_owned(), parsed.query().unwrap_or("").to_owned())
            }
            "unix" => {
                // `unix://[userinfo@]/path?query`: parsed by hand (a URL parser
                // wants a host wherever there is a userinfo).
                let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
                let before_query = before_query.split('#').next().unwrap_or("");
                let slash = before_query.find('/').ok_or_else(|| invalid("no socket path"))?;
                let (authority, path) = before_query.split_at(slash);
                let (user, password) = match authority.rsplit_once('@') {
                    Some((userinfo, _)) => match userinfo.split_once(':') {
                        Some((user, password)) => (Some(user), Some(password)),
                        None => (Some(userinfo), None),
                    },
                    None => (None, None),
                };
                let user = user.filter(|u| !u.is_empty()).map(decode).transpose()?;
                (user, password.map(decode).transpose()?, decode(path)?, query.to_owned())
            }
            _ => return Err(TargetError::UnsupportedScheme),
        };
        let mut params = std::collections::HashMap::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            params.entry(name.into_owned()).or_insert_with(|| value.into_owned());
        }
        // What redis-py does: the netloc's credentials win over the query's,
        // and `?db=` over the path.
        let user = netloc_user.or_else(|| params.get("username").cloned()).filter(|u| !u.is_empty());
        let password = netloc_password.or_else(|| params.get("password").cloned()).filter(|p| !p.is_empty());
        let db = match params.get("db") {
            Some(db) => db.parse::<i64>().map_err(|_| invalid("Invalid value for 'db'"))?,
            None if scheme == "unix" => 0,
            None => path.trim_matches('/').parse::<i64>().unwrap_or(0),
        };
        let addr = match scheme.as_str() {
            "unix" => ConnectionAddr::Unix(path.into()),
            _ => {
                let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
                let host = match parsed.host() {
                    Some(url::Host::Domain(host)) => decode(host)?,
                    Some(url::Host::Ipv4(ip)) => ip.to_string(),
                    Some(url::Host::Ipv6(ip)) => ip.to_string(),
                    None => "localhost".into(),
                };
                let port = parsed.port().unwrap_or(6379);
                if scheme == "rediss" {
                    let insecure = params.get("ssl_cert_reqs").is_some_and(|v| v.eq_ignore_ascii_case("none"));
                    ConnectionAddr::TcpTls { host, port, insecure, tls_params: None }
                } else {
                    ConnectionAddr::Tcp(host, port)
                }
            }
        };
        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = user {
            redis = redis.set_username(user);
        }
        if let Some(password) = password {
            redis = redis.set_password(password);
        }
        let tls = matches!(addr, ConnectionAddr::TcpTls { .. });
        let info = addr.into_connection_info().map_err(|e| invalid(&e.kind_text()))?;
        let info = info.set_redis_settings(redis).set_tcp_settings(keepalive());
        let certs = if tls { Some(tls_certificates(&params)?) } else { None };
        let accept_invalid_hostnames = tls
            && params
                .get("ssl_check_hostname")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "0" | "f" | "false" | "n" | "no"));
        let client_name = params.get("client_name").filter(|n| !n.is_empty()).cloned();
        let client = client(&info, certs.as_ref(), accept_invalid_hostnames).map_err(|e| invalid(&e.kind_text()))?;
        Ok(Endpoint { client, info, certs, accept_invalid_hostnames, client_name })
    }

    /// A connection to this server speaking `protocol` (`None`: the URL's),
    /// named with `client_name` when the URL gives one.
    fn connect(
        &self,
        protocol: Option<ProtocolVersion>,
        connect_timeout: Duration,
        read_timeout: Option<Duration>,
    ) -> RedisResult<Connection> {
        let mut con = match protocol {
            None => connect(&self.client, connect_timeout, read_timeout)?,
            Some(_) => {
                let client =
                    client(&speaking(self.info.clone(), protocol), self.certs.as_ref(), self.accept_invalid_hostnames)?;
                connect(&client, connect_timeout, read_timeout)?
            }
        };
        if let Some(name) = &self.client_name {
            redis::cmd("CLIENT").arg("SETNAME").arg(name).exec(&mut con)?;
        }
        Ok(con)
    }
}

/// `info` speaking `protocol` (`None`: as it is).
fn speaking(info: ConnectionInfo, protocol: Option<ProtocolVersion>) -> ConnectionInfo {
    match protocol {
        Some(protocol) => {
            let settings = info.redis_settings().clone().set_protocol(protocol);
            info.set_redis_settings(settings)
        }
        None => info,
    }
}

/// A client for `info`, with its certificates (`rediss://`).
fn client(
    info: &ConnectionInfo,
    certs: Option<&TlsCertificates>,
    accept_invalid_hostnames: bool,
) -> RedisResult<Client> {
    let client = match certs {
        Some(certs) => Client::build_with_tls(info.clone(), certs.clone())?,
        None => Client::open(info.clone())?,
    };
    if !accept_invalid_hostnames {
        return Ok(client);
    }
    let mut addr = client.get_connection_info().addr().clone();
    addr.set_danger_accept_invalid_hostnames(true);
    Client::open(client.get_connection_info().clone().set_addr(addr))
}

fn decode(text: &str) -> Result<String, TargetError> {
    percent_encoding_decode(text).ok_or_else(|| TargetError::InvalidUrl("a percent-encoded part is not UTF-8".into()))
}

fn percent_encoding_decode(text: &str) -> Option<String> {
    // `form_urlencoded` would turn `+` into a space: decode `%XX` only.
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The certificates the TLS query parameters name.
fn tls_certificates(params: &std::collections::HashMap<String, String>) -> Result<TlsCertificates, TargetError> {
    let read = |path: &String| {
        std::fs::read(path).map_err(|e| TargetError::TlsFile { path: path.clone(), reason: e.to_string() })
    };
    let client_tls = match (params.get("ssl_certfile"), params.get("ssl_keyfile")) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
        (None, None) => None,
        _ => return Err(TargetError::TlsPair),
    };
    let root_cert = params.get("ssl_ca_certs").map(read).transpose()?;
    Ok(TlsCertificates { client_tls, root_cert })
}

/// TCP keepalive with short timers on every link (the twin of the pure
/// links' `KEEPALIVE_*`): a peer gone without FIN or RST (a NAT entry dropped,
/// a VIP moved) is noticed in about 5 + 2 * 3 s where the OS lets us set the
/// timers; elsewhere keepalive is on with the system's timers.
pub fn keepalive() -> TcpSettings {
    #[cfg(not(target_family = "wasm"))]
    {
        use redis::io::tcp::socket2::TcpKeepalive;
        let probes = TcpKeepalive::new().with_time(Duration::from_secs(KEEPALIVE_IDLE_SECS));
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "dragonfly",
            target_os = "illumos",
            target_os = "fuchsia",
            target_os = "windows"
        ))]
        let probes = probes.with_interval(Duration::from_secs(KEEPALIVE_INTERVAL_SECS)).with_retries(KEEPALIVE_PROBES);
        TcpSettings::default().set_keepalive(probes)
    }
    #[cfg(target_family = "wasm")]
    TcpSettings::default()
}

pub const KEEPALIVE_IDLE_SECS: u64 = 5;
pub const KEEPALIVE_INTERVAL_SECS: u64 = 2;
pub const KEEPALIVE_PROBES: u32 = 3;

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

/// A link error in the words both engines log it with (the twin of the pure
/// links' `cause`): the same fault reads the same on either backend.
/// `timeout`: the read timeout of the link that failed.
pub fn cause(err: &RedisError, timeout: Duration) -> String {
    match err.code() {
        Some("LOADING") => return "loading".into(),
        Some("OOM") => return "out of memory".into(),
        Some("TRYAGAIN") => return "try again".into(),
        Some("MASTERDOWN") => return "master down".into(),
        Some("CLUSTERDOWN") => return "cluster down".into(),
        Some("READONLY") => return "read only replica".into(),
        _ => {}
    }
    if err.is_connection_refusal() {
        "connection refused".into()
    } else if err.is_timeout() {
        format!("timed out (no reply within {:?}s)", timeout.as_secs_f64())
    } else if err.is_io_error() || err.is_connection_dropped() {
        "connection lost".into()
    } else {
        "connection error".into()
    }
}

/// The most events an engine keeps between two drains (`take_events`).
pub const MAX_EVENTS: usize = 100;

/// Retries and reconnects with their cause, kept under the engine's lock
/// until the face drains and logs them (an engine thread never waits on the
/// GIL). Bounded: past `MAX_EVENTS` the oldest go, and the next drain says
/// how many (kind `dropped`).
#[derive(Default)]
pub struct Events {
    kept: VecDeque<(&'static str, String)>,
    dropped: u64,
}

impl Events {
    pub fn push(&mut self, kind: &'static str, cause: String) {
        if self.kept.len() >= MAX_EVENTS {
            self.kept.pop_front();
            self.dropped += 1;
        }
        self.kept.push_back((kind, cause));
    }

    pub fn take(&mut self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(self.kept.len() + 1);
        if self.dropped > 0 {
            out.push(("dropped", format!("{} older events not kept", self.dropped)));
            self.dropped = 0;
        }
        out.extend(self.kept.drain(..));
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn io_error(kind: io::ErrorKind) -> RedisError {
        RedisError::from(io::Error::new(kind, "test"))
    }

    /// The same words as the pure twin's `cause` (tests/test_observability.py).
    #[test]
    fn causes() {
        let ten = Duration::from_secs(10);
        assert_eq!(cause(&io_error(io::ErrorKind::ConnectionRefused), ten), "connection refused");
        assert_eq!(cause(&io_error(io::ErrorKind::TimedOut), ten), "timed out (no reply within 10.0s)");
        assert_eq!(cause(&io_error(io::ErrorKind::WouldBlock), ten), "timed out (no reply within 10.0s)");
        assert_eq!(cause(&io_error(io::ErrorKind::ConnectionReset), ten), "connection lost");
        assert_eq!(cause(&io_error(io::ErrorKind::UnexpectedEof), ten), "connection lost");
        for (code, words) in [
            ("LOADING", "loading"),
            ("OOM", "out of memory"),
            ("TRYAGAIN", "try again"),
            ("MASTERDOWN", "master down"),
            ("CLUSTERDOWN", "cluster down"),
            ("READONLY", "read only replica"),
        ] {
            let reply = redis::parse_redis_value(format!("-{code} test\r\n").as_bytes());
            match reply.and_then(redis::Value::extract_error) {
                Err(err) => assert_eq!(cause(&err, ten), words),
                Ok(value) => panic!("{code}: not an error reply: {value:?}"),
            }
        }
    }

    #[test]
    fn events_are_bounded() {
        let mut events = Events::default();
        for i in 0..MAX_EVENTS + 5 {
            events.push("retry", format!("cause {i}"));
        }
        let got = events.take();
        assert_eq!(got[0], ("dropped", "5 older events not kept".to_owned()));
        assert_eq!(got.len(), MAX_EVENTS + 1);
        assert_eq!(got[1], ("retry", "cause 5".to_owned()));
        assert!(events.take().is_empty());
    }
}
