//! `herald serve`'s configuration: flags win over `HERALD_*` environment
//! variables (clap reads both), which win over the TOML file, which wins over
//! the embedded defaults (SPEC §2).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use herald_engine::identity::KeyMaterial;
use herald_engine::limits::Limits;
use herald_net::{
    Cidrs, ClusterConfig, FsyncMode, ProxyUrl, Secret, ServerConfig, TlsFiles, WakeupRoute,
};
use herald_store::DataDirLock;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (keys as the flags, with `_`; limits in `[limits]`).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// UA WebSocket listener [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_UA_LISTEN")]
    pub ua_listen: Option<SocketAddr>,
    /// AS HTTP listener [default: 127.0.0.1:8081]
    #[arg(long, env = "HERALD_AS_LISTEN")]
    pub as_listen: Option<SocketAddr>,
    /// Admin HTTP listener: /health, /metrics, /about without a token
    /// (keep it private) [default: 127.0.0.1:8082]
    #[arg(long, env = "HERALD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Base URL of push endpoints [default: http://<as-listen>]
    #[arg(long, env = "HERALD_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Data directory: WAL, keys [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards [default: one per available core]
    #[arg(long, env = "HERALD_SHARDS")]
    pub shards: Option<usize>,
    /// When the WAL calls fdatasync [default: batch]
    #[arg(long, env = "HERALD_FSYNC", value_enum)]
    pub fsync: Option<FsyncMode>,
    /// MCC-MNC=udp or MCC-MNC=URL of a wakeup proxy (repeatable; env: comma-separated)
    #[arg(
        long = "wakeup-route",
        env = "HERALD_WAKEUP_ROUTES",
        value_delimiter = ','
    )]
    pub wakeup_routes: Vec<String>,
    /// File holding the bearer secret Herald sends to wakeup proxies (the
    /// one their --secret-file holds); needed by routes through a proxy
    #[arg(long, env = "HERALD_WAKEUP_PROXY_SECRET_FILE")]
    pub wakeup_proxy_secret_file: Option<PathBuf>,
    /// Key file [default: <data-dir>/keys, generated with mode 0600 when missing]
    #[arg(long, env = "HERALD_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// Bearer token for operator requests on the AS listener: PUT
    /// /v1/broadcasts/<id>, /metrics, /about (prefer the env or the config
    /// file: flags show in `ps`) [default: none, disabled]
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Run as one node of a cluster: every seed node of its Redis Cluster,
    /// comma-separated (redis://H:P,redis://H:P,...) [default: none, a
    /// single node with its own WAL]
    #[arg(long, env = "HERALD_CLUSTER")]
    pub cluster: Option<String>,
    /// Cluster mode: the node-to-node listener (other nodes send it the
    /// pushes for UAs held here; keep it on a private network)
    #[arg(long, env = "HERALD_NODE_LISTEN")]
    pub node_listen: Option<SocketAddr>,
    /// Cluster mode: how other nodes reach --node-listen [default:
    /// http://<node-listen>]
    #[arg(long, env = "HERALD_NODE_URL")]
    pub node_url: Option<String>,
    /// A proxy (CIDR) whose PROXY protocol headers (UA and AS listeners) and
    /// Forwarded / X-Forwarded-For headers (AS listener) name the client
    /// (repeatable; env: comma-separated) [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "HERALD_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// PEM certificate chain (the server's first): serve wss:// on the UA
    /// listener and https:// on the AS listener; SIGHUP reloads it
    /// [default: none, plain text]
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// `[cluster]` in the config file: the Redis Cluster behind cluster mode.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct ClusterFile {
    /// The `--cluster` value: every seed node.
    seeds: Option<String>,
    /// Replicas that must acknowledge each write (`WAIT`) before a 2xx.
    replicas: u32,
    /// How long a `WAIT` may take before the writes count as failed (503).
    wait_timeout_ms: u64,
    /// Redis calls per pipelined batch of one shard.
    pipeline_max: usize,
}

impl Default for ClusterFile {
    fn default() -> ClusterFile {
        ClusterFile {
            seeds: None,
            replicas: 1,
            wait_timeout_ms: 1000,
            pipeline_max: 512,
        }
    }
}

/// The config file. A key with a fixed default holds it here (the
/// `Default` impl is where those defaults live); an `Option` key's default
/// is computed in [`resolve`] or is "none". `packaging/herald.toml` lists
/// every key with its default, and a test below keeps it so.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    ua_listen: SocketAddr,
    as_listen: SocketAddr,
    admin_listen: SocketAddr,
    endpoint_url: Option<String>,
    data_dir: PathBuf,
    shards: Option<usize>,
    #[serde(deserialize_with = "fsync_from_text")]
    fsync: FsyncMode,
    wakeup_routes: Vec<String>,
    wakeup_proxy_secret_file: Option<PathBuf>,
    keys_file: Option<PathBuf>,
    admin_token: Option<String>,
    node_listen: Option<SocketAddr>,
    node_url: Option<String>,
    trusted_proxies: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    cluster: ClusterFile,
    limits: Limits,
}

impl Default for FileConfig {
    fn default() -> FileConfig {
        let address = |text: &str| text.parse().expect("literal address");
        FileConfig {
            ua_listen: address("127.0.0.1:8080"),
            as_listen: address("127.0.0.1:8081"),
            admin_listen: address("127.0.0.1:8082"),
            endpoint_url: None,
            data_dir: PathBuf::from("./herald-data"),
            shards: None,
            fsync: FsyncMode::default(),
            wakeup_routes: Vec::new(),
            wakeup_proxy_secret_file: None,
            keys_file: None,
            admin_token: None,
            node_listen: None,
            node_url: None,
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            cluster: ClusterFile::default(),
            limits: Limits::default(),
        }
    }
}

/// The file's `fsync` key takes the flag's spellings; a bad one fails like
/// any bad key (the message names the file, line and column).
fn fsync_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<FsyncMode, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Shards are capped: each holds a mesh ring to every other one.
const SHARDS_MAX: usize = 256;

/// The server's configuration, and the data dir's lock, taken before the data
/// dir is written to (the key file lives there by default).
pub fn resolve(args: ServeArgs) -> Result<(ServerConfig, DataDirLock), String> {
    let file = match &args.config {
        Some(path) => {
            let text = fs::read_to_string(path)
                .map_err(|error| format!("cannot read config {}: {error}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|error| format!("bad config {}: {error}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let ua_listen = args.ua_listen.unwrap_or(file.ua_listen);
    let as_listen = args.as_listen.unwrap_or(file.as_listen);
    let admin_listen = args.admin_listen.unwrap_or(file.admin_listen);
    let node_listen = args.node_listen.or(file.node_listen);
    let mut listeners = vec![
        ("UA", ua_listen),
        ("AS", as_listen),
        ("admin", admin_listen),
    ];
    listeners.extend(node_listen.map(|address| ("node", address)));
    refuse_shared_listeners(&listeners)?;
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => return Err("TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)".to_owned()),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint_url = args
        .endpoint_url
        .or(file.endpoint_url)
        .unwrap_or_else(|| format!("{scheme}://{as_listen}"));
    if !(endpoint_url.starts_with("http://") || endpoint_url.starts_with("https://")) {
        return Err(format!(
            "endpoint URL must start with http:// or https://, got {endpoint_url:?}"
        ));
    }
    let data_dir = args.data_dir.unwrap_or(file.data_dir);
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    let shards = args.shards.or(file.shards).unwrap_or(cores);
    if shards == 0 || shards > SHARDS_MAX {
        return Err(format!(
            "--shards must be between 1 and {SHARDS_MAX}, got {shards}"
        ));
    }
    let fsync = args.fsync.unwrap_or(file.fsync);
    let routes = if args.wakeup_routes.is_empty() {
        file.wakeup_routes
    } else {
        args.wakeup_routes
    };
    let wakeup_routes = routes
        .iter()
        .map(|route| parse_route(route))
        .collect::<Result<Vec<_>, _>>()?;
    let wakeup_proxy_secret = args
        .wakeup_proxy_secret_file
        .or(file.wakeup_proxy_secret_file)
        .map(|path| read_secret_file(&path))
        .transpose()?;
    let through_proxy = wakeup_routes
        .iter()
        .any(|(_, route)| matches!(route, WakeupRoute::Proxy(_)));
    if through_proxy && wakeup_proxy_secret.is_none() {
        return Err(
            "wakeup routes through a wakeup proxy need wakeup_proxy_secret_file \
             (--wakeup-proxy-secret-file): the proxy refuses requests without its secret"
                .to_owned(),
        );
    }
    let trusted_proxies = if args.trusted_proxies.is_empty() {
        file.trusted_proxies
    } else {
        args.trusted_proxies
    };
    let trusted_proxies =
        Cidrs::parse(&trusted_proxies).map_err(|error| format!("--trusted-proxy: {error}"))?;
    let lock = DataDirLock::acquire(&data_dir).map_err(|error| error.to_string())?;
    prepare_data_dir(&data_dir)?;
    let keys_file = args
        .keys_file
        .or(file.keys_file)
        .unwrap_or_else(|| data_dir.join("keys"));
    let seeds = args.cluster.or(file.cluster.seeds.clone());
    if seeds.is_some() && !keys_file.exists() {
        return Err(format!(
            "cluster mode: the key file {} must exist, the same on every node (start one node \
             without --cluster to generate it, then copy it to the others)",
            keys_file.display()
        ));
    }
    let keys = load_or_create_keys(&keys_file)?;
    let cluster = match seeds {
        None => None,
        Some(seeds) => Some(cluster_config(
            &seeds,
            node_listen,
            args.node_url.or(file.node_url),
            &file.cluster,
        )?),
    };
    let config = ServerConfig {
        ua_listen,
        as_listen,
        admin_listen,
        endpoint_url,
        data_dir,
        shards,
        fsync,
        wakeup_routes,
        wakeup_proxy_secret,
        limits: file.limits,
        keys,
        admin_token: args
            .admin_token
            .or(file.admin_token)
            .filter(|token| !token.is_empty()),
        cluster,
        trusted_proxies,
        tls,
    };
    Ok((config, lock))
}

/// Cluster mode's settings: the seeds, and a node listener other nodes can
/// reach.
fn cluster_config(
    seeds: &str,
    node_listen: Option<SocketAddr>,
    node_url: Option<String>,
    file: &ClusterFile,
) -> Result<ClusterConfig, String> {
    let seeds =
        herald_store::redis::parse_seeds(seeds).map_err(|error| format!("--cluster: {error}"))?;
    let node_listen =
        node_listen.ok_or("cluster mode needs --node-listen: other nodes send pushes there")?;
    let node_url = node_url.unwrap_or_else(|| format!("http://{node_listen}"));
    if !node_url.starts_with("http://") {
        return Err(format!(
            "--node-url must start with http://, got {node_url:?}"
        ));
    }
    if file.pipeline_max == 0 || file.wait_timeout_ms == 0 {
        return Err("[cluster] pipeline_max and wait_timeout_ms must be above 0".to_owned());
    }
    Ok(ClusterConfig {
        seeds,
        node_listen,
        node_url: node_url.trim_end_matches('/').to_owned(),
        replicas: file.replicas,
        wait_timeout_ms: file.wait_timeout_ms,
        pipeline_max: file.pipeline_max,
    })
}

/// Two listeners on one port would both bind (SO_REUSEPORT) and split its
/// connections: say so instead.
fn refuse_shared_listeners(listeners: &[(&str, SocketAddr)]) -> Result<(), String> {
    for (at, (name, address)) in listeners.iter().enumerate() {
        for (other, other_address) in &listeners[at + 1..] {
            let same_ip = address.ip() == other_address.ip()
                || address.ip().is_unspecified()
                || other_address.ip().is_unspecified();
            if same_ip && address.port() == other_address.port() {
                return Err(format!(
                    "the {name} listener ({address}) and the {other} listener ({other_address}) share a port"
                ));
            }
        }
    }
    Ok(())
}

/// `MCC-MNC=udp` or `MCC-MNC=http://proxy:port`.
pub fn parse_route(text: &str) -> Result<(String, WakeupRoute), String> {
    let bad = || {
        format!("bad wakeup route {text:?}: expected MCC-MNC=udp or MCC-MNC=URL (e.g. 214-07=udp)")
    };
    let (network, target) = text.split_once('=').ok_or_else(bad)?;
    let (mcc, mnc) = network.split_once('-').ok_or_else(bad)?;
    let digits = |part: &str, lengths: &[usize]| {
        lengths.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(mcc, &[3]) || !digits(mnc, &[2, 3]) {
        return Err(bad());
    }
    let route = match target {
        "udp" => WakeupRoute::Udp,
        url if url.starts_with("https://") => {
            return Err(format!(
                "wakeup route {text:?}: https:// wakeup proxies are not supported; Herald calls \
                 them over plain HTTP (http://), so keep the link to the proxy on a private \
                 network or a VPN"
            ))
        }
        url if url.starts_with("http://") => WakeupRoute::Proxy(
            ProxyUrl::parse(url).map_err(|error| format!("wakeup route {text:?}: {error}"))?,
        ),
        _ => return Err(bad()),
    };
    Ok((network.to_owned(), route))
}

/// A shared secret from a file (SPEC §5: its content, trimmed): the wakeup
/// proxy's `--secret-file` and Herald's `wakeup_proxy_secret_file`. It is
/// sent in an HTTP header, so visible ASCII only.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = fs::read_to_string(path)
        .map_err(|error| format!("cannot read secret file {}: {error}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    if !secret.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(format!(
            "secret file {}: the secret must be visible ASCII characters, without spaces",
            path.display()
        ));
    }
    Ok(Secret::new(secret.to_owned()))
}

/// Creates the data dir if needed and makes it private to Herald's user
/// (0700): the WAL holds message bodies and wakeup addresses in plain text
/// (SECURITY.md, "Data at rest"), and files under a private directory are
/// out of other users' reach whatever their own mode.
fn prepare_data_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir)
        .map_err(|error| format!("unusable data dir {}: {error}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|error| format!("cannot make data dir {} private: {error}", dir.display()))?;
    let probe = dir.join(".write-probe");
    fs::write(&probe, b"ok")
        .map_err(|error| format!("data dir {} is not writable: {error}", dir.display()))?;
    let _ = fs::remove_file(probe);
    Ok(())
}

fn load_or_create_keys(path: &Path) -> Result<KeyMaterial, String> {
    match fs::read_to_string(path) {
        Ok(text) => KeyMaterial::parse(&text)
            .map_err(|error| format!("bad key file {}: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let material = KeyMaterial::generate(&mut rand::rngs::OsRng);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|error| format!("cannot create key file {}: {error}", path.display()))?;
            file.write_all(material.to_file_text().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|error| format!("cannot write key file {}: {error}", path.display()))?;
            tracing::info!(path = %path.display(), "generated new server keys");
            Ok(material)
        }
        Err(error) => Err(format!("cannot read key file {}: {error}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_data_dir_is_made_private() {
        let scratch = Scratch::new("private-dir");
        fs::set_permissions(&scratch.0, fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare_data_dir(&scratch.0).expect("prepare");
        let mode = fs::metadata(&scratch.0).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "mode {mode:o}");
    }

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("herald-tools-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("scratch dir");
            Scratch(path)
        }

        /// A config file with `fsync = <value>` and a data dir in here.
        fn config(&self, fsync: &str) -> PathBuf {
            let path = self.0.join("herald.toml");
            let text = format!(
                "data_dir = {:?}\nshards = 1\nfsync = {fsync:?}\n",
                self.0.join("data")
            );
            fs::write(&path, text).expect("write config");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn fsync_flag_takes_the_modes_and_lists_them_on_a_bad_value() {
        for mode in FsyncMode::ALL {
            let cli = Cli::try_parse_from(["herald", "--fsync", mode.as_str()]).expect("parses");
            assert_eq!(cli.serve.fsync, Some(mode));
        }
        let Err(error) = Cli::try_parse_from(["herald", "--fsync", "sometimes"]) else {
            panic!("--fsync sometimes parsed");
        };
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
        let message = error.to_string();
        assert!(
            message.contains("[possible values: always, batch, never]"),
            "{message}"
        );
    }

    #[test]
    fn config_file_fsync_takes_the_same_spellings_and_the_flag_wins() {
        let scratch = Scratch::new("fsync");
        for mode in FsyncMode::ALL {
            let args = ServeArgs {
                config: Some(scratch.config(mode.as_str())),
                ..ServeArgs::default()
            };
            assert_eq!(resolve(args).expect("resolves").0.fsync, mode);
        }
        let args = ServeArgs {
            config: Some(scratch.config("never")),
            fsync: Some(FsyncMode::Always),
            ..ServeArgs::default()
        };
        assert_eq!(resolve(args).expect("resolves").0.fsync, FsyncMode::Always);
        let args = ServeArgs {
            config: Some(scratch.config("sometimes")),
            ..ServeArgs::default()
        };
        let error = resolve(args).expect_err("a bad fsync value is refused");
        assert!(error.starts_with("bad config "), "{error}");
        assert!(error.contains("line 3"), "{error}");
        assert!(
            error.contains("fsync must be always, batch or never, not \"sometimes\""),
            "{error}"
        );
    }

    #[test]
    fn trusted_proxies_from_the_file_the_flag_wins() {
        let scratch = Scratch::new("proxies");
        let path = scratch.config("batch");
        let mut text = fs::read_to_string(&path).expect("config");
        text.push_str("trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\n");
        fs::write(&path, text).expect("write config");
        let resolved = |flags: &[&str]| {
            let mut argv = vec!["herald", "--config", path.to_str().expect("utf-8")];
            argv.extend_from_slice(flags);
            let cli = Cli::try_parse_from(argv).expect("parses");
            resolve(cli.serve).map(|(config, _)| config.trusted_proxies)
        };
        let from_file = resolved(&[]).expect("resolves");
        assert_eq!(from_file.to_string(), "10.0.0.0/8, 2001:db8::1/128");
        let from_flags =
            resolved(&["--trusted-proxy", "192.0.2.0/24,198.51.100.1"]).expect("flags");
        assert_eq!(from_flags.to_string(), "192.0.2.0/24, 198.51.100.1/32");
        let error = resolved(&["--trusted-proxy", "10.0.0.0/40"]).expect_err("a bad range");
        assert!(error.starts_with("--trusted-proxy: "), "{error}");
    }

    #[test]
    fn rate_limits_come_from_the_limits_table() {
        let scratch = Scratch::new("rates");
        let path = scratch.config("batch");
        let mut text = fs::read_to_string(&path).expect("config");
        text.push_str(
            "[limits]\nnotifications_per_channel_per_minute = 5\nnotifications_per_channel_burst = 6\n\
             as_requests_per_ip_per_s = 0\nua_connects_per_ip_burst = 7\nrate_limit_loopback = true\n",
        );
        fs::write(&path, text).expect("write config");
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let limits = resolve(args).expect("resolves").0.limits;
        let defaults = Limits::default();
        assert_eq!(
            (
                limits.notifications_per_channel_per_minute,
                limits.notifications_per_channel_burst,
                limits.as_requests_per_ip_per_s,
                limits.as_requests_per_ip_burst,
                limits.ua_connects_per_ip_per_s,
                limits.ua_connects_per_ip_burst,
                limits.rate_limit_loopback,
            ),
            (
                5,
                6,
                0,
                defaults.as_requests_per_ip_burst,
                defaults.ua_connects_per_ip_per_s,
                7,
                true
            )
        );
    }

    #[test]
    fn proxy_routes_need_the_secret_file_which_is_read_trimmed() {
        let scratch = Scratch::new("secret");
        let path = scratch.config("batch");
        let mut text = fs::read_to_string(&path).expect("config");
        text.push_str("wakeup_routes = [\"310-410=http://10.0.0.1:9000\"]\n");
        fs::write(&path, text).expect("write config");
        let secret_file = scratch.0.join("proxy-secret");
        let resolved = |flags: &[&str]| {
            let mut argv = vec!["herald", "--config", path.to_str().expect("utf-8")];
            argv.extend_from_slice(flags);
            let cli = Cli::try_parse_from(argv).expect("parses");
            resolve(cli.serve).map(|(config, _)| config.wakeup_proxy_secret)
        };
        let error = resolved(&[]).expect_err("a proxy route without a secret");
        assert!(error.contains("wakeup_proxy_secret_file"), "{error}");
        let flag = [
            "--wakeup-proxy-secret-file",
            secret_file.to_str().expect("utf-8"),
        ];
        fs::write(&secret_file, "  s3cret-Value\n").expect("write secret");
        let secret = resolved(&flag).expect("resolves").expect("a secret");
        assert_eq!(secret.expose(), "s3cret-Value");
        assert_eq!(format!("{secret:?}"), "Secret(..)", "Debug hides it");
        for bad in ["\n", "two words", "line\r\nInjected: header"] {
            fs::write(&secret_file, bad).expect("write secret");
            let error = resolved(&flag).expect_err(bad);
            assert!(error.contains("secret file"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn listeners_on_one_port_are_refused() {
        let address = |text: &str| text.parse::<SocketAddr>().expect("address");
        let distinct = [
            ("UA", address("127.0.0.1:8080")),
            ("AS", address("0.0.0.0:8081")),
            ("admin", address("127.0.0.1:8082")),
        ];
        assert!(refuse_shared_listeners(&distinct).is_ok());
        let error = refuse_shared_listeners(&[
            ("AS", address("0.0.0.0:8081")),
            ("admin", address("127.0.0.1:8081")),
        ])
        .expect_err("one port");
        assert!(
            error.contains("AS listener (0.0.0.0:8081) and the admin"),
            "{error}"
        );
        assert!(refuse_shared_listeners(&[
            ("AS", address("127.0.0.2:8081")),
            ("admin", address("127.0.0.1:8081")),
        ])
        .is_ok());
    }

    /// The example config shipped for operators (packaging/herald.toml).
    const EXAMPLE: &str = include_str!("../../packaging/herald.toml");

    /// A line `# key = value`: a key the example shows commented out.
    fn commented_key(line: &str) -> Option<&str> {
        let rest = line.strip_prefix("# ")?;
        let (key, _) = rest.split_once(" = ")?;
        key.bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte == b'_')
            .then_some(rest)
    }

    /// The field names a `Deserialize` struct knows: serde hands them to
    /// `deserialize_struct`, which this deserializer answers with them.
    fn field_names<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        use serde::de::{self, Visitor};
        struct Names<'a>(&'a mut &'static [&'static str]);
        impl<'de> de::Deserializer<'de> for Names<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("names taken"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Names(&mut fields));
        fields.to_vec()
    }

    #[test]
    fn the_example_config_lists_every_key_with_its_default() {
        // As written, the example is the defaults.
        let written: FileConfig = toml::from_str(EXAMPLE).expect("the example parses");
        assert_eq!(
            written,
            FileConfig::default(),
            "a value differs from the code's default"
        );
        // With the commented keys uncommented it still parses (their
        // examples are valid), and it names every key the parser knows.
        let mut uncommented = String::new();
        let mut previous = "";
        for line in EXAMPLE.lines() {
            let key_line = commented_key(line).unwrap_or(line);
            if key_line.contains(" = ") && !key_line.starts_with('#') {
                assert!(
                    previous.starts_with("# ") && commented_key(previous).is_none(),
                    "{key_line:?} needs a line of meaning above it"
                );
            }
            uncommented.push_str(key_line);
            uncommented.push('\n');
            previous = line;
        }
        let every: FileConfig = toml::from_str(&uncommented).expect("every example parses");
        assert_ne!(every, FileConfig::default());
        let table: toml::Table = toml::from_str(&uncommented).expect("a table");
        let keys = |table: &toml::Table| {
            let mut keys: Vec<String> = table.keys().cloned().collect();
            keys.sort();
            keys
        };
        let expected = |mut names: Vec<&str>| {
            names.sort();
            names.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(keys(&table), expected(field_names::<FileConfig>()));
        for (section, names) in [
            ("limits", field_names::<Limits>()),
            ("cluster", field_names::<ClusterFile>()),
        ] {
            let section_table = table[section].as_table().expect(section);
            assert_eq!(keys(section_table), expected(names), "[{section}]");
        }
    }

    #[test]
    fn routes_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_route("214-07=udp").unwrap(),
            ("214-07".to_owned(), WakeupRoute::Udp)
        );
        assert_eq!(
            parse_route("310-410=http://10.0.0.1:9000").unwrap().1,
            WakeupRoute::Proxy(ProxyUrl::parse("http://10.0.0.1:9000").unwrap())
        );
        let error = parse_route("310-410=https://10.0.0.1:9000").expect_err("https");
        assert!(
            error.contains("https:// wakeup proxies are not supported"),
            "{error}"
        );
        for bad in [
            "214-07",
            "21-07=udp",
            "214-7=udp",
            "214-07=tcp",
            "abc-de=udp",
            "214-07=http://",
            "214-07=http://user@proxy",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }
}
